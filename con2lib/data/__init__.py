"""Data sets by name: each loader turns a data set on disk into a :class:`OneClassData` split.

The names are the values of the ``dataset`` parameter; ``docs/datasets.md`` describes each one's
layout on disk, split, preprocessing and download source.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from con2lib.data.base import OneClassData, subsample
from con2lib.data.folder import load_folder
from con2lib.data.images import SkippedImageWarning
from con2lib.data.medical import load_br35h, load_kvasir, load_melanoma, load_pneumonia
from con2lib.data.medmnist import load_medmnist
from con2lib.data.natural import load_cifar100, load_dogsvscats, load_imagenet30, load_muffinvschihuahua
from con2lib.data.standard import load_digits, load_torchvision

if TYPE_CHECKING:
    from con2lib.config import Config

DATASETS: dict[str, Callable[[Config], OneClassData]] = {
    "digits": load_digits,
    "mnist": load_torchvision,
    "fashionmnist": load_torchvision,
    "cifar10": load_torchvision,
    # the paper's medical data sets (normal classes fixed by the data)
    "breastmnist": load_medmnist,
    "octmnist": load_medmnist,
    "pneumoniamnist": load_medmnist,
    "kvasir": load_kvasir,
    "br35h": load_br35h,
    "pneumonia": load_pneumonia,
    "melanoma": load_melanoma,
    # the paper's natural-image benchmarks (normal_class picks the normal class)
    "cifar100": load_cifar100,
    "imagenet30": load_imagenet30,
    "dogsvscats": load_dogsvscats,
    "muffinvschihuahua": load_muffinvschihuahua,
    # the user's own images
    "folder": load_folder,
}


def load_dataset(cfg: Config) -> OneClassData:
    """Loads ``cfg.dataset`` as a one-class split, capped by ``max_train`` / ``max_test``."""
    data = DATASETS[cfg.dataset](cfg)
    return subsample(data, cfg.max_train, cfg.max_test, cfg.split_seed)


__all__ = ["DATASETS", "OneClassData", "SkippedImageWarning", "load_dataset"]
