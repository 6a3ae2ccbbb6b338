"""MedMNIST data sets (BreastMNIST, OctMNIST, PneumoniaMNIST) from the ``.npz`` files ``medmnist`` downloads.

Read with numpy directly (no ``medmnist`` package, no network). MedMNIST+ ships each data set at
28, 64, 128 and 224 pixels (``<name>.npz``, ``<name>_64.npz``, ...); the loader reads the smallest
resolution >= ``image_size`` (else the largest present), then resizes to ``round(image_size * 256/224)``
and centre-crops ``image_size`` as appendix D does at 224. The official train/test split is kept
(``val`` is unused), and the result is cached like decoded image files.
"""

from __future__ import annotations

import zipfile
from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np
import torch

from con2lib.data import cache
from con2lib.data.base import OneClassData
from con2lib.data.images import Preprocess, preprocess_arrays
from con2lib.data.splits import PAPER_CROP_RATIO, check_fixed_normal, missing_data
from con2lib.paths import resolve

if TYPE_CHECKING:
    from pathlib import Path

    from con2lib.config import Config

# Label names as in medmnist's INFO dict; the normal classes are those the paper trains on.
MEDMNIST: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    "breastmnist": (("malignant", "normal, benign"), (1,)),
    "octmnist": (("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"), (3,)),
    "pneumoniamnist": (("normal", "pneumonia"), (0,)),
}
RESOLUTIONS = (28, 64, 128, 224)
KEYS = ("train_images", "train_labels", "test_images", "test_labels")
SOURCE = "pip install medmnist, then e.g. `python -m medmnist download` (or https://medmnist.com / Zenodo)"


def npz_name(dataset: str, resolution: int) -> str:
    """MedMNIST's file name at a resolution (28 has no suffix)."""
    return f"{dataset}.npz" if resolution == 28 else f"{dataset}_{resolution}.npz"


def pick_file(root: Path, dataset: str, image_size: int) -> tuple[Path, int]:
    """The smallest available resolution >= ``image_size``, else the largest available one.

    Raises:
        FileNotFoundError: if no file of the data set is in ``root``.
    """
    available = {r: root / npz_name(dataset, r) for r in RESOLUTIONS if (root / npz_name(dataset, r)).is_file()}
    if not available:
        names = ", ".join(npz_name(dataset, r) for r in RESOLUTIONS)
        raise missing_data(dataset, root, f"<data_root>/{{{names}}} (any of them; keys {', '.join(KEYS)})",
                           SOURCE, "no MedMNIST .npz file found")
    res = min((r for r in available if r >= image_size), default=max(available))
    return available[res], res


def load_medmnist(cfg: Config) -> OneClassData:
    """One-class BreastMNIST, OctMNIST or PneumoniaMNIST: normal training images, full official test set."""
    names, normal = MEDMNIST[cfg.dataset]
    check_fixed_normal(cfg, [names[i] for i in normal])
    root = resolve(cfg.data_root)
    path, res = pick_file(root, cfg.dataset, cfg.image_size)
    prep = Preprocess(cfg.image_size, "L", "crop", PAPER_CROP_RATIO)
    st = path.stat()
    key = {"file": path.name, "size": st.st_size, "mtime": st.st_mtime_ns, "prep": asdict(prep), "normal": normal}
    entry = cache.entry_path(cache.cache_dir(cfg, [root]), cfg.dataset, f"{prep.size}{prep.mode}", str(path), key)
    arrays = cache.load(entry)
    if arrays is None or not {"train", "test", "test_classes"} <= arrays.keys():
        arrays = _build(path, cfg.dataset, normal, prep)
        cache.save(entry, arrays)
    test_classes = arrays["test_classes"].astype(np.int64)
    labels = (~np.isin(test_classes, normal)).astype(np.int64)
    info = {
        "source": str(path),
        "source_resolution": res,
        "split": "official MedMNIST train/test (val unused)",
        "preprocessing": prep.describe(),
        "channels": prep.channels,
        "n_train": len(arrays["train"]),
        "n_test": len(test_classes),
        "n_test_anomalous": int(labels.sum()),
        "skipped_files": [],
    }
    return OneClassData(
        train=torch.from_numpy(arrays["train"]),
        test=torch.from_numpy(arrays["test"]),
        test_labels=torch.from_numpy(labels),
        test_classes=torch.from_numpy(test_classes),
        class_names=names,
        normal_classes=tuple(names[i] for i in normal),
        anomalous_classes=tuple(n for i, n in enumerate(names) if i not in normal),
        info=info,
    )


def _build(path: Path, dataset: str, normal: tuple[int, ...], prep: Preprocess) -> dict[str, np.ndarray]:
    """Reads the npz (only the arrays needed) and preprocesses the normal training and all test images."""
    try:
        with np.load(path, allow_pickle=False) as z:
            absent = [k for k in KEYS if k not in z.files]
            if absent:
                raise ValueError(
                    f"{path} is not a complete MedMNIST file of {dataset!r}: keys {', '.join(absent)} missing "
                    f"(expected {', '.join(KEYS)}; download again: {SOURCE})"
                )
            train_labels = np.asarray(z["train_labels"]).reshape(-1)
            train_images = z["train_images"][np.isin(train_labels, normal)]
            test_images = z["test_images"]
            test_classes = np.asarray(z["test_labels"]).reshape(-1).astype(np.int64)
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"cannot read MedMNIST file {path} ({err}); download it again: {SOURCE}") from err
    for name, images in (("train_images", train_images), ("test_images", test_images)):
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(f"{path}: {name} has dtype {images.dtype} and shape {images.shape}; "
                             "expected uint8 (N, H, W) or (N, H, W, 3) as MedMNIST stores it")
    if len(test_images) != len(test_classes):
        raise ValueError(f"{path}: test_images and test_labels differ in length")
    return {
        "train": preprocess_arrays(train_images, prep, f"preprocessing {dataset} train"),
        "test": preprocess_arrays(test_images, prep, f"preprocessing {dataset} test"),
        "test_classes": test_classes,
    }
