"""Bundled and torchvision data sets: scikit-learn digits, MNIST, Fashion-MNIST, CIFAR-10."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from con2lib.data.base import OneClassData, one_class_split, resize_uint8, resolve_class, to_nchw_uint8, validation_args
from con2lib.paths import resolve

if TYPE_CHECKING:
    from con2lib.config import Config

DIGITS_TEST_FRACTION = 0.5


def load_digits(cfg: Config) -> OneClassData:
    """scikit-learn's 8x8 digits (1,797 images, bundled): a seeded, stratified 50/50 train/test split."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # pixel values are 0..16
    names = tuple(str(i) for i in range(10))
    normal = resolve_class(cfg.normal_class, names, "digits")
    x_train, x_test, y_train, y_test = train_test_split(
        images, bunch.target, test_size=DIGITS_TEST_FRACTION, stratify=bunch.target, random_state=cfg.split_seed
    )
    info = {"source": "sklearn.datasets.load_digits", "split": "seeded stratified",
            "split_seed": cfg.split_seed, "test_fraction": DIGITS_TEST_FRACTION}
    return one_class_split(
        resize_uint8(to_nchw_uint8(x_train), cfg.image_size), y_train,
        resize_uint8(to_nchw_uint8(x_test), cfg.image_size), y_test,
        [normal], names, info, *validation_args(cfg),
    )


_TORCHVISION = {
    "mnist": ("MNIST", "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte", "https://yann.lecun.com/exdb/mnist/"),
    "fashionmnist": ("FashionMNIST", "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
                     "https://github.com/zalandoresearch/fashion-mnist"),
    "cifar10": ("CIFAR10", "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
                "https://www.cs.toronto.edu/~kriz/cifar.html"),
}


def load_torchvision(cfg: Config) -> OneClassData:
    """One-class MNIST, Fashion-MNIST or CIFAR-10 from torchvision's on-disk layout (no download)."""
    import torchvision

    cls_name, layout, source = _TORCHVISION[cfg.dataset]
    root = resolve(cfg.data_root)
    cls = getattr(torchvision.datasets, cls_name)
    try:
        train, test = (cls(root=str(root), train=flag, download=False) for flag in (True, False))
    except RuntimeError as err:
        raise FileNotFoundError(
            f"data set {cfg.dataset!r} not found under data_root={str(root)!r}: expected {root}/{layout} "
            f"(torchvision's layout; download from {source}, e.g. torchvision.datasets.{cls_name}(root, download=True))"
        ) from err
    names = tuple(train.classes)
    normal = resolve_class(cfg.normal_class, names, cfg.dataset)
    info = {"source": str(root), "split": "official train/test"}
    return one_class_split(
        resize_uint8(to_nchw_uint8(_array(train.data)), cfg.image_size), _array(train.targets),
        resize_uint8(to_nchw_uint8(_array(test.data)), cfg.image_size), _array(test.targets),
        [normal], names, info, *validation_args(cfg),
    )


def _array(x: object) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
