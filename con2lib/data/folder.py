"""The user's own images (``dataset: folder``): a folder of normal training images and a labelled test folder.

``folder_train`` holds normal images (sub-folders are searched too); ``folder_test`` holds one
sub-folder per test class, each named in ``folder_normal`` or ``folder_anomalous``. Images are loaded
in one channel if a sample of them is all grayscale, else in RGB, and resized on the shorter edge to
``image_size`` and centre-cropped (nothing is cut away beyond the longer edge's excess).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from con2lib.data.base import OneClassData
from con2lib.data.images import Preprocess, list_images, sniff_mode
from con2lib.data.splits import check_fixed_normal, image_source, official_split
from con2lib.paths import resolve

if TYPE_CHECKING:
    from con2lib.config import Config

FOLDER_HELP = (
    "dataset 'folder' reads folder_train (normal training images) and folder_test/<sub-folder>/* where every "
    "sub-folder is listed in folder_normal or folder_anomalous, e.g. folder_train: data/mine/train, "
    "folder_test: data/mine/test, folder_normal: [good], folder_anomalous: [scratch, dent]"
)


def load_folder(cfg: Config) -> OneClassData:
    """One-class split from the user's folders; test classes are ``folder_normal`` then ``folder_anomalous``.

    Raises:
        ValueError: on missing or contradictory parameters.
        FileNotFoundError: on a missing folder or a folder without images (named).
    """
    check_fixed_normal(cfg, cfg.folder_normal or ["folder_normal"])
    if not cfg.folder_train or not cfg.folder_test:
        raise ValueError(f"parameters folder_train and folder_test are required: {FOLDER_HELP}")
    if not cfg.folder_normal or not cfg.folder_anomalous:
        raise ValueError(f"parameters folder_normal and folder_anomalous each need at least one sub-folder "
                         f"(AUROC needs both kinds of test images): {FOLDER_HELP}")
    both = sorted(set(cfg.folder_normal) & set(cfg.folder_anomalous))
    if both:
        raise ValueError(f"sub-folder(s) {', '.join(both)} listed in both folder_normal and folder_anomalous")
    train_dir, test_dir = resolve(cfg.folder_train), resolve(cfg.folder_test)
    for name, path in (("folder_train", train_dir), ("folder_test", test_dir)):
        if not path.is_dir():
            raise FileNotFoundError(f"parameter {name}={str(path)!r} is not a folder: {FOLDER_HELP}")
    train_files = list_images(train_dir, cfg.strict)
    if not train_files:
        raise FileNotFoundError(f"no normal training images in folder_train={str(train_dir)!r} "
                                f"(image files: *.jpg, *.jpeg, *.png, *.bmp, *.tif, *.webp, ...)")
    names = (*cfg.folder_normal, *cfg.folder_anomalous)
    present = sorted(p.name for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    test: dict[int, list[Path]] = {}
    for idx, name in enumerate(names):
        sub = test_dir / name
        if not sub.is_dir():
            raise FileNotFoundError(f"test sub-folder {str(sub)!r} (listed in folder_normal/folder_anomalous) does "
                                    f"not exist; sub-folders of {str(test_dir)!r}: {', '.join(present) or 'none'}")
        test[idx] = list_images(sub, cfg.strict)
        if not test[idx]:
            raise FileNotFoundError(f"test sub-folder {str(sub)!r} holds no image files")
    unlisted = [p for p in present if p not in names and p != "__MACOSX"]
    if unlisted:
        warnings.warn(f"test sub-folder(s) {', '.join(unlisted)} of {test_dir} are in neither folder_normal nor "
                      "folder_anomalous and are ignored", stacklevel=2)
    # compared by real path: a link inside folder_train to the test folder (or to ``..``) lists test images
    # under training names
    test_real = {os.path.realpath(p) for files in test.values() for p in files}
    overlap = [p for p in train_files if os.path.realpath(p) in test_real]
    if overlap:
        real = os.path.realpath(overlap[0])
        link = f", a link to {real}" if real != str(overlap[0]) else ""
        warnings.warn(f"{len(overlap)} image(s) are both training and test images (e.g. {overlap[0]}{link}); "
                      "the test score will be optimistic", stacklevel=2)
    mode = sniff_mode([*train_files, *(p for files in test.values() for p in files)])
    root = Path(os.path.commonpath([train_dir, test_dir]))
    src = image_source(cfg, root, Preprocess(cfg.image_size, mode, "crop", 1.0), [train_dir, test_dir])
    info = {"folder_train": str(train_dir), "folder_test": str(test_dir), "split": "given by the folders",
            "ignored_test_folders": unlisted}
    normal = list(range(len(cfg.folder_normal)))
    return official_split(src, names, normal, {0: train_files}, test, info)
