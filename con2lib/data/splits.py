"""Shared pieces of the file-based loaders: finding the data, clear errors, official and seeded splits."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from con2lib.data.base import OneClassData
from con2lib.data.cache import cache_dir
from con2lib.data.decoding import ImageSource, decode_groups
from con2lib.data.images import Preprocess, list_images

if TYPE_CHECKING:
    from con2lib.config import Config

SEEDED_TRAIN_FRACTION = 0.8  # of each normal class, for training; the rest and all anomalies are the test set
PAPER_CROP_RATIO = 256 / 224  # "resize to 256, centre-crop 224" (appendix D), at any image_size


def missing_data(dataset: str, looked_at: Path, layout: str, source: str, problem: str = "") -> FileNotFoundError:
    """The one error a missing or incomplete data set raises: what, where, the layout and the download."""
    what = f": {problem}" if problem else ""
    return FileNotFoundError(
        f"data set {dataset!r} not found or incomplete under data_root={str(looked_at)!r}{what}.\n"
        f"Expected layout: {layout}\nDownload: {source}"
    )


def find_base(root: Path, candidates: Sequence[str], looks_right: Callable[[Path], bool]) -> Path | None:
    """The first ``root/candidate`` the data set's marker check accepts (leniency about one folder level).

    Downloads unpack with or without their top folder (and Kaggle zips sometimes twice), so a loader
    accepts ``data_root`` pointing at the folder above the data set's folder or at that folder itself.
    """
    for candidate in candidates:
        path = root / candidate if candidate else root
        if path.is_dir() and looks_right(path):
            return path
    return None


def class_files(
    base: Path, folders: Mapping[int, str], dataset: str, root: Path, layout: str, source: str
) -> dict[int, list[Path]]:
    """Image files per class index from ``base/<folder>``; a missing or empty class folder is an error."""
    files = {}
    for idx, folder in folders.items():
        path = base / folder
        if not path.is_dir():
            raise missing_data(dataset, root, layout, source, f"folder {str(path)!r} does not exist")
        found = list_images(path)
        if not found:
            raise missing_data(dataset, root, layout, source, f"folder {str(path)!r} holds no image files")
        files[idx] = found
    return files


def check_fixed_normal(cfg: Config, normal_names: Sequence[str]) -> None:
    """Data sets whose normal classes are defined by the data accept only the default ``normal_class``."""
    if cfg.normal_class not in (0, "0", ""):
        raise ValueError(
            f"parameter normal_class={cfg.normal_class!r} does not apply to data set {cfg.dataset!r}: its normal "
            f"class(es) are fixed ({', '.join(normal_names)}); leave normal_class at its default 0"
        )


def image_source(cfg: Config, root: Path, prep: Preprocess, data_paths: Sequence[Path] | None = None) -> ImageSource:
    """The decoding context of a run; the cache folder must lie outside ``data_paths`` (default: ``root``)."""
    return ImageSource(cfg.dataset, root, prep, cache_dir(cfg, [root] if data_paths is None else data_paths),
                       cfg.strict)


def official_split(
    src: ImageSource,
    class_names: Sequence[str],
    normal: Sequence[int],
    train_files: Mapping[int, Sequence[Path]],
    test_files: Mapping[int, Sequence[Path]],
    info: dict[str, Any],
) -> OneClassData:
    """Training = every file of ``train_files`` (normal classes only); test = every file of ``test_files``.

    Only the normal classes' training files are decoded: anomalous training images are never used.
    """
    train_idx, test_idx = sorted(train_files), sorted(test_files)
    groups = [train_files[c] for c in train_idx] + [test_files[c] for c in test_idx]
    names = [_group_name("train", class_names[c], train_files[c]) for c in train_idx]
    names += [_group_name("test", class_names[c], test_files[c]) for c in test_idx]
    decoded = decode_groups(groups, names, src)
    train_groups = [train_files[c] for c in train_idx]
    train_dec, test_dec = decoded[: len(train_idx)], decoded[len(train_idx):]
    train = _concat([d.images for d in train_dec], src.prep)
    test = _concat([d.images for d in test_dec], src.prep)
    classes = np.concatenate(
        [np.full(len(d.images), c, dtype=np.int64) for c, d in zip(test_idx, test_dec, strict=True)]
    )
    skipped = [s for d in decoded for s in d.skipped]
    folders = sorted({str(p.parent) for g in train_groups for p in g[:1]})
    return _assemble(train, test, classes, class_names, normal, skipped, folders, info, src)


def seeded_split(
    src: ImageSource,
    class_names: Sequence[str],
    normal: Sequence[int],
    files: Mapping[int, Sequence[Path]],
    seed: int,
    info: dict[str, Any],
    train_fraction: float = SEEDED_TRAIN_FRACTION,
) -> OneClassData:
    """Per normal class, a seeded ``train_fraction`` of its files trains; the rest and all anomalies test.

    The split is drawn over the file lists before decoding (and per class, from a stream seeded by
    ``(seed, class)``), so an unreadable file only removes itself and never reshuffles the others.
    """
    idx = sorted(files)
    decoded = decode_groups([files[c] for c in idx], [_group_name("all", class_names[c], files[c]) for c in idx], src)
    train_parts, test_parts, test_classes = [], [], []
    for c, dec in zip(idx, decoded, strict=True):
        row = np.cumsum(dec.kept) - 1  # file index -> row in dec.images
        n = len(dec.kept)
        if c in normal:
            order = np.random.default_rng([seed, c]).permutation(n)
            n_train = min(max(round(n * train_fraction), 1), max(n - 1, 1))
            chosen = np.zeros(n, dtype=bool)
            chosen[order[:n_train]] = True
            train_parts.append(dec.images[row[chosen & dec.kept]])
            test_parts.append(dec.images[row[~chosen & dec.kept]])
        else:
            test_parts.append(dec.images)  # already only the usable files: no copy
        test_classes.append(np.full(len(test_parts[-1]), c, dtype=np.int64))
    train = _concat(train_parts, src.prep)
    test = _concat(test_parts, src.prep)
    skipped = [s for d in decoded for s in d.skipped]
    folders = sorted({str(files[c][0].parent) for c in normal})
    info = {**info, "split": f"seeded: {train_fraction:.0%} of each normal class trains, the other "
                             f"{1 - train_fraction:.0%} and all anomalous images test",
            "split_seed": seed, "train_fraction": train_fraction}
    return _assemble(train, test, np.concatenate(test_classes), class_names, normal, skipped, folders, info, src)


def _group_name(split: str, class_name: str, files: Sequence[Path]) -> str:
    # Split, class and folder identify a cache slot; a group edited later replaces its own old entry.
    return f"{split}/{class_name}:{files[0].parent if files else ''}"


def _concat(parts: Sequence[np.ndarray], prep: Preprocess) -> np.ndarray:
    if not parts:
        return np.empty((0, prep.channels, prep.size, prep.size), dtype=np.uint8)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _assemble(
    train: np.ndarray,
    test: np.ndarray,
    test_classes: np.ndarray,
    class_names: Sequence[str],
    normal: Sequence[int],
    skipped: list[str],
    train_folders: list[str],
    info: dict[str, Any],
    src: ImageSource,
) -> OneClassData:
    if len(train) == 0:
        raise ValueError(
            f"data set {src.dataset!r}: no usable normal training images in {', '.join(train_folders)} "
            f"({len(skipped)} file(s) skipped as unreadable)"
        )
    labels = (~np.isin(test_classes, list(normal))).astype(np.int64)
    info = {
        **info,
        "source": str(src.root),
        "preprocessing": src.prep.describe(),
        "channels": src.prep.channels,
        "n_train": len(train),
        "n_test": len(test),
        "n_test_anomalous": int(labels.sum()),
        "skipped_files": skipped,
    }
    return OneClassData(
        train=torch.from_numpy(train),
        test=torch.from_numpy(test),
        test_labels=torch.from_numpy(labels),
        test_classes=torch.from_numpy(test_classes),
        class_names=tuple(class_names),
        normal_classes=tuple(class_names[i] for i in sorted(normal)),
        anomalous_classes=tuple(n for i, n in enumerate(class_names) if i not in set(normal)),
        info=info,
    )
