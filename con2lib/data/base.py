"""The one-class split every data set is turned into, and helpers shared by the loaders."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from con2lib.config import MIN_TRAIN

if TYPE_CHECKING:
    from con2lib.config import Config


@dataclass(frozen=True)
class OneClassData:
    """Normal training images and a labelled test set, as uint8 tensors ready for the device.

    Attributes:
        train: uint8 (N, C, H, W) normal training images.
        test: uint8 (T, C, H, W) test images.
        test_labels: int64 (T,), 1 = anomaly, 0 = normal.
        test_classes: int64 (T,), index into ``class_names`` of each test image's original class.
        class_names: names of the data set's classes.
        normal_classes: names of the classes treated as normal.
        anomalous_classes: names of the classes treated as anomalous.
        info: facts about the split (seed, ratios, source paths) logged with every run.
        train_ids: (N,) an id of each training image in the data set: ``train[k]`` (its index in the
            loader's training split), or ``#i`` (its index among the normal training images loaded);
            filled with the latter when not given. ``con2 score`` names nearest training images by it.
    """

    train: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    test_classes: torch.Tensor
    class_names: tuple[str, ...]
    normal_classes: tuple[str, ...]
    anomalous_classes: tuple[str, ...]
    info: dict[str, Any] = field(default_factory=dict)
    train_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.train_ids:  # frozen: set once, here
            object.__setattr__(self, "train_ids", tuple(f"#{i}" for i in range(len(self.train))))
        if len(self.train_ids) != len(self.train):
            raise ValueError(f"{len(self.train_ids)} training image ids for {len(self.train)} training images")
        if self.train.dtype != torch.uint8 or self.test.dtype != torch.uint8:
            raise TypeError("OneClassData holds uint8 images")
        if self.train.ndim != 4 or self.test.ndim != 4 or self.train.shape[1:] != self.test.shape[1:]:
            raise ValueError(f"image shapes differ: train {tuple(self.train.shape)}, test {tuple(self.test.shape)}")
        if len(self.train) == 0:
            raise ValueError("no normal training images")
        if not (len(self.test) == len(self.test_labels) == len(self.test_classes)):
            raise ValueError("test images, labels and classes differ in length")


def resolve_class(normal_class: int | str, class_names: Sequence[str], dataset: str) -> int:
    """Index of the normal class given by index or by name; a clear error names the choices."""
    if isinstance(normal_class, str):
        if normal_class in class_names:
            return list(class_names).index(normal_class)
        if normal_class.isdigit():
            normal_class = int(normal_class)
    if isinstance(normal_class, int) and 0 <= normal_class < len(class_names):
        return normal_class
    choices = ", ".join(f"{i}={n}" for i, n in enumerate(class_names))
    raise ValueError(f"parameter normal_class={normal_class!r} is not a class of {dataset}; expected one of {choices}")


def to_nchw_uint8(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, H, W), (N, H, W, C) or (N, C, H, W) uint8 array -> contiguous uint8 (N, C, H, W) tensor."""
    x = torch.as_tensor(np.asarray(images))
    if x.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.permute(0, 3, 1, 2)
    if x.ndim != 4:
        raise ValueError(f"expected a batch of images, got shape {tuple(x.shape)}")
    if x.shape[1] == 4:  # RGBA: the alpha channel carries no content for these data sets
        x = x[:, :3]
    return x.contiguous()


def resize_uint8(images: torch.Tensor, size: int, batch: int = 2048) -> torch.Tensor:
    """Resizes uint8 (N, C, H, W) square images to ``size`` with antialiased bilinear filtering."""
    if images.shape[-2:] == (size, size):
        return images
    out = []
    for chunk in images.split(batch):
        y = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(y.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def one_class_split(
    train_images: torch.Tensor,
    train_classes: np.ndarray,
    test_images: torch.Tensor,
    test_classes: np.ndarray,
    normal: Sequence[int],
    class_names: Sequence[str],
    info: dict[str, Any],
    validation: float = 0.0,
    seed: int = 0,
) -> OneClassData:
    """Keeps the normal classes' training images; labels test images of every other class anomalous.

    With ``validation`` > 0 the test split is not used at all: the returned "test" set is a
    validation set carved from the training split (see :func:`validation_split`), so that defaults
    are chosen without touching the figures that are reported.
    """
    normal_idx = sorted(set(int(i) for i in normal))
    train_classes = np.asarray(train_classes, dtype=np.int64)
    test_classes = np.asarray(test_classes, dtype=np.int64)
    rows = np.arange(len(train_classes))  # each training image's index in the loader's training split
    if validation > 0:
        ratio = float(np.isin(test_classes, normal_idx, invert=True).sum()) / max(1, int(np.isin(test_classes, normal_idx).sum()))
        rows, test_images, test_classes, val_info = validation_split(
            train_images, train_classes, normal_idx, validation, ratio, seed)
        train_images, train_classes = train_images[torch.from_numpy(rows)], train_classes[rows]
        info = {**info, **val_info}
    train_mask = np.isin(train_classes, normal_idx)
    labels = (~np.isin(test_classes, normal_idx)).astype(np.int64)
    return OneClassData(
        train=train_images[torch.from_numpy(train_mask)],
        test=test_images,
        test_labels=torch.from_numpy(labels),
        test_classes=torch.from_numpy(test_classes),
        class_names=tuple(class_names),
        normal_classes=tuple(class_names[i] for i in normal_idx),
        anomalous_classes=tuple(n for i, n in enumerate(class_names) if i not in normal_idx),
        info=info,
        train_ids=tuple(f"train[{k}]" for k in rows[train_mask]),
    )


def validation_args(cfg: Config) -> tuple[float, int]:
    """``(validation fraction, seed)`` for :func:`one_class_split`: 0 unless ``eval_split`` is validation."""
    return (cfg.val_fraction if cfg.eval_split == "validation" else 0.0), cfg.split_seed


def validation_split(
    images: torch.Tensor, classes: np.ndarray, normal: Sequence[int], fraction: float, anomaly_ratio: float, seed: int
) -> tuple[np.ndarray, torch.Tensor, np.ndarray, dict[str, Any]]:
    """A validation split from the training split alone: no test image is used.

    A seeded ``fraction`` of the normal classes' training images is held out as validation normals;
    validation anomalies are a seeded sample of the other classes' training images, as many as
    ``anomaly_ratio`` times the normals (the test split's ratio, so validation AUROCs are as noisy
    as test ones), drawn evenly from each anomalous class.

    Args:
        images: uint8 (N, C, H, W) training images of every class.
        classes: (N,) their class indices.
        normal: the normal class indices.
        fraction: share of each normal class held out, in (0, 1).
        anomaly_ratio: validation anomalies per validation normal.
        seed: ``split_seed``.

    Returns:
        (rows of ``images`` left for training, validation images, their classes, info for the run's params).
    """
    rng = np.random.default_rng([seed, 0x7A1])  # a stream of its own: split_seed also seeds other draws
    is_normal = np.isin(classes, normal)
    normal_rows = np.flatnonzero(is_normal)
    held = rng.permutation(normal_rows)[: max(1, round(fraction * len(normal_rows)))]
    others = sorted(set(classes[~is_normal].tolist()))
    per_class = max(1, round(anomaly_ratio * len(held) / max(1, len(others))))
    anomalies = [rng.permutation(np.flatnonzero(classes == c))[:per_class] for c in others]
    val_rows = np.sort(np.concatenate([held, *anomalies]).astype(np.int64))
    train_rows = np.setdiff1d(normal_rows, held)
    _check_validation_counts(fraction, len(normal_rows), len(held), len(train_rows))
    info = {"eval_split": "validation (from the training split; no test image is used)",
            "val_fraction": fraction, "val_normal": len(held), "val_anomalous": len(val_rows) - len(held)}
    return train_rows, images[torch.from_numpy(val_rows)], classes[val_rows], info


MIN_TEST_PER_KIND = 5  # fewer normal or anomalous test images: an AUROC of them says little


def _check_validation_counts(fraction: float, n_normal: int, n_held: int, n_train: int) -> None:
    """What ``val_fraction`` leaves of a class too small for its config bounds: an error when too few images
    train, a warning when too few validation normals make the AUROC (as ``max_test``'s)."""
    if n_train < MIN_TRAIN:
        raise ValueError(f"parameter val_fraction={fraction} leaves {n_train} of the {n_normal} normal training "
                         f"image(s) to train on; at least {MIN_TRAIN} are needed: lower val_fraction")
    if n_held < MIN_TEST_PER_KIND:
        warnings.warn(f"val_fraction={fraction} holds out {n_held} of the {n_normal} normal training image(s) for "
                      f"validation: the AUROC of so few images is not meaningful (at least {MIN_TEST_PER_KIND}: "
                      "raise val_fraction)", stacklevel=4)


def _warn_if_tiny_test(max_test: int, counts: list[int]) -> None:
    """Warns when ``max_test`` leaves so few test images that the AUROC is close to meaningless."""
    if min(counts) < MIN_TEST_PER_KIND:
        warnings.warn(f"max_test={max_test} leaves {counts[0]} normal and {counts[1]} anomalous test image(s): "
                      f"the AUROC of so few images is not meaningful (use max_test 0 for all, or at least "
                      f"{MIN_TEST_PER_KIND} of each kind)", stacklevel=3)


def subsample(data: OneClassData, max_train: int, max_test: int, seed: int) -> OneClassData:
    """Seeded random subset (test kept stratified by label) for tiny runs; 0 keeps everything."""
    rng = np.random.default_rng(seed)
    train, train_ids = data.train, data.train_ids
    if 0 < max_train < len(train):
        picked = np.sort(rng.choice(len(train), max_train, replace=False))
        train, train_ids = train[torch.from_numpy(picked)], tuple(train_ids[i] for i in picked)
    keep = np.arange(len(data.test))
    if 0 < max_test < len(keep):
        labels = data.test_labels.numpy()
        parts = []
        for value in (0, 1):
            idx = np.flatnonzero(labels == value)
            n = max(1, round(max_test * len(idx) / len(labels))) if len(idx) else 0
            parts.append(rng.choice(idx, min(n, len(idx)), replace=False))
        keep = np.sort(np.concatenate(parts))
        _warn_if_tiny_test(max_test, [len(p) for p in parts])
    t = torch.from_numpy(keep)
    return OneClassData(
        train=train,
        test=data.test[t],
        test_labels=data.test_labels[t],
        test_classes=data.test_classes[t],
        class_names=data.class_names,
        normal_classes=data.normal_classes,
        anomalous_classes=data.anomalous_classes,
        info={**data.info, "max_train": max_train, "max_test": max_test},
        train_ids=train_ids,
    )
