"""Data sets by name: each loader turns a data set on disk into a :class:`OneClassData` split."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from con2lib.data.base import OneClassData, subsample
from con2lib.data.standard import load_digits, load_torchvision

if TYPE_CHECKING:
    from con2lib.config import Config

DATASETS: dict[str, Callable[[Config], OneClassData]] = {
    "digits": load_digits,
    "mnist": load_torchvision,
    "fashionmnist": load_torchvision,
    "cifar10": load_torchvision,
}


def load_dataset(cfg: Config) -> OneClassData:
    """Loads ``cfg.dataset`` as a one-class split, capped by ``max_train`` / ``max_test``."""
    data = DATASETS[cfg.dataset](cfg)
    return subsample(data, cfg.max_train, cfg.max_test, cfg.seed)


__all__ = ["DATASETS", "OneClassData", "load_dataset"]
