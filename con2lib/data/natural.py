"""The paper's natural-image benchmarks: CIFAR-100 (20 superclasses), ImageNet30, Dogs vs. Cats, Muffin vs. Chihuahua.

One class (chosen by ``normal_class``, an index or a name) is normal, the others are anomalous.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from con2lib.data.base import OneClassData, one_class_split, resize_uint8, resolve_class, to_nchw_uint8, validation_args
from con2lib.data.images import Preprocess, list_images
from con2lib.data.splits import (
    PAPER_CROP_RATIO,
    class_files,
    find_base,
    image_source,
    missing_data,
    official_split,
    seeded_split,
)
from con2lib.paths import resolve

if TYPE_CHECKING:
    from con2lib.config import Config

CIFAR100_LAYOUT = "<data_root>/cifar-100-python/{train,test,meta} (the python pickles of the official tarball)"
CIFAR_SOURCE = "https://www.cs.toronto.edu/~kriz/cifar.html (CIFAR-100 python version)"
IMAGENET30_LAYOUT = "<data_root>/one_class_train/<class>/* and <data_root>/one_class_test/<class>/* (30 classes)"
IMAGENET30_SOURCE = "https://github.com/hendrycks/ss-ood (ImageNet30 train and test tarballs)"
DOGSVSCATS_LAYOUT = "<data_root>/train/cat.<n>.jpg and <data_root>/train/dog.<n>.jpg (the competition's train.zip)"
DOGSVSCATS_SOURCE = "https://www.kaggle.com/competitions/dogs-vs-cats/data"
MUFFIN_LAYOUT = "<data_root>/{train,test}/{chihuahua,muffin}/*.jpg"
MUFFIN_SOURCE = "https://www.kaggle.com/datasets/samuelcortinhas/muffin-vs-chihuahua-image-classification"


def load_cifar100(cfg: Config) -> OneClassData:
    """CIFAR-100 with its 20 coarse superclasses as classes; official train/test, RGB, resized like CIFAR-10."""
    root = resolve(cfg.data_root)
    base = find_base(root, ["cifar-100-python", ""],
                     lambda p: all((p / n).is_file() for n in ("train", "test", "meta")))
    if base is None:
        raise missing_data(cfg.dataset, root, CIFAR100_LAYOUT, CIFAR_SOURCE, "no cifar-100-python/{train,test,meta}")
    (coarse_names,) = _unpickle(base / "meta", b"coarse_label_names")
    names = tuple(n.decode() for n in coarse_names)
    normal = resolve_class(cfg.normal_class, names, cfg.dataset)
    arrays = {}
    for split in ("train", "test"):
        data, labels = _unpickle(base / split, b"data", b"coarse_labels")
        data, labels = np.asarray(data, dtype=np.uint8), np.asarray(labels, dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
            raise ValueError(f"{base / split}: b'data' has shape {data.shape} for {len(labels)} labels; "
                             "expected (N, 3072) as CIFAR-100 stores it")
        images = resize_uint8(to_nchw_uint8(data.reshape(-1, 3, 32, 32)), cfg.image_size)
        arrays[split] = (images, labels)
    info = {"source": str(base), "split": "official train/test", "classes": "20 coarse superclasses",
            "preprocessing": f"resize to {cfg.image_size}x{cfg.image_size}", "channels": 3, "skipped_files": []}
    return one_class_split(*arrays["train"], *arrays["test"], [normal], names, info, *validation_args(cfg))


def load_imagenet30(cfg: Config) -> OneClassData:
    """ImageNet30 (Hendrycks et al.): official split; only the normal class's training images are decoded.

    Shorter edge to ``round(image_size * 256/224)``, centre crop ``image_size`` (the paper's random
    224 crop of training is left to the content augmentation).
    """
    root = resolve(cfg.data_root)
    base = find_base(root, ["", "ImageNet30", "imagenet30"], lambda p: (p / "one_class_train").is_dir())
    if base is None:
        raise missing_data(cfg.dataset, root, IMAGENET30_LAYOUT, IMAGENET30_SOURCE, "no one_class_train folder")
    train_dir, test_dir = _unnest(base / "one_class_train"), _unnest(base / "one_class_test")
    names = _subfolders(train_dir)
    if not test_dir.is_dir() or _subfolders(test_dir) != names:
        raise missing_data(cfg.dataset, root, IMAGENET30_LAYOUT, IMAGENET30_SOURCE,
                           "one_class_test must hold the same class folders as one_class_train")
    if not names:
        raise missing_data(cfg.dataset, root, IMAGENET30_LAYOUT, IMAGENET30_SOURCE, "no class folders")
    normal = resolve_class(cfg.normal_class, names, cfg.dataset)
    folders = dict(enumerate(names))
    args = (cfg.dataset, root, IMAGENET30_LAYOUT, IMAGENET30_SOURCE)
    train = class_files(train_dir, {normal: names[normal]}, *args)
    test = class_files(test_dir, folders, *args)
    src = image_source(cfg, root, Preprocess(cfg.image_size, "RGB", "crop", PAPER_CROP_RATIO))
    info = {"data_folder": str(base), "split": "official train/test"}
    return official_split(src, names, [normal], train, test, info)


def load_dogsvscats(cfg: Config) -> OneClassData:
    """Dogs vs. Cats (Kaggle train set, labels in file names): seeded 80/20 split of the normal class.

    Shorter edge to ``image_size``, centre crop (appendix D at 128), RGB.
    """
    root = resolve(cfg.data_root)
    names = ("cat", "dog")
    normal = resolve_class(cfg.normal_class, names, cfg.dataset)
    base = find_base(root, ["train", "dogs-vs-cats/train", ""], _has_pets)
    if base is None:
        zipped = any((root / z).is_file() for z in ("train.zip", "dogs-vs-cats/train.zip"))
        hint = " (found train.zip: unzip it)" if zipped else ""
        raise missing_data(cfg.dataset, root, DOGSVSCATS_LAYOUT, DOGSVSCATS_SOURCE, f"no train/cat.*.jpg files{hint}")
    files: dict[int, list[Path]] = {0: [], 1: []}
    for path in list_images(base):
        animal = path.name.split(".", 1)[0].lower()
        if animal in names:  # other images in the folder carry no label
            files[names.index(animal)].append(path)
    for idx, found in files.items():
        if not found:
            raise missing_data(cfg.dataset, root, DOGSVSCATS_LAYOUT, DOGSVSCATS_SOURCE,
                               f"no {names[idx]}.<n>.jpg files in {str(base)!r}")
    src = image_source(cfg, root, Preprocess(cfg.image_size, "RGB", "crop", 1.0))
    return seeded_split(src, names, [normal], files, cfg.split_seed, {"data_folder": str(base)})


def load_muffinvschihuahua(cfg: Config) -> OneClassData:
    """Muffin vs. Chihuahua: official train/test folders; shorter edge to ``image_size``, centre crop, RGB."""
    root = resolve(cfg.data_root)
    names = ("chihuahua", "muffin")
    normal = resolve_class(cfg.normal_class, names, cfg.dataset)
    base = find_base(root, ["", "muffin-vs-chihuahua", "muffin-vs-chihuahua-image-classification"],
                     lambda p: (p / "train" / "muffin").is_dir() or (p / "train" / "chihuahua").is_dir())
    if base is None:
        raise missing_data(cfg.dataset, root, MUFFIN_LAYOUT, MUFFIN_SOURCE, "no train/{chihuahua,muffin} folders")
    args = (cfg.dataset, root, MUFFIN_LAYOUT, MUFFIN_SOURCE)
    train = class_files(base / "train", {normal: names[normal]}, *args)
    test = class_files(base / "test", dict(enumerate(names)), *args)
    src = image_source(cfg, root, Preprocess(cfg.image_size, "RGB", "crop", 1.0))
    info = {"data_folder": str(base), "split": "official train/test"}
    return official_split(src, names, [normal], train, test, info)


def _has_pets(path: Path) -> bool:
    return any(True for _ in path.glob("cat.*")) or any(True for _ in path.glob("dog.*"))


def _unnest(path: Path) -> Path:
    # Some re-uploads of ImageNet30 unpack to one_class_test/one_class_test/<class>.
    return path / path.name if (path / path.name).is_dir() else path


def _subfolders(path: Path) -> tuple[str, ...]:
    return tuple(sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")
                        and p.name != "__MACOSX"))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler limited to what CIFAR's pickles hold (dicts, lists, bytes, numpy arrays).

    Refusing every other global means a tampered file cannot run code when it is loaded.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes pickled by Python 3 with protocol 2
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(path: Path, *keys: bytes) -> list[Any]:
    """Entries of a CIFAR pickle; unreadable files and missing keys name the file and the key."""
    try:
        with open(path, "rb") as f:
            content = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as err:
        raise ValueError(f"cannot read CIFAR-100 file {path} ({err}); download it again: {CIFAR_SOURCE}") from err
    absent = [k for k in keys if not isinstance(content, dict) or k not in content]
    if absent:
        raise ValueError(f"CIFAR-100 file {path} has no key(s) {', '.join(map(repr, absent))}; expected the "
                         f"official python version ({CIFAR_SOURCE})")
    return [content[k] for k in keys]
