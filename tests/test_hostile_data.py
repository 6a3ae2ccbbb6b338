"""Hostile data folders (issue 16): link loops, duplicate links, dangling and self-referencing links,
unreadable sub-folders. Each lists every real image once, skips what cannot be read by name, and never
fails the whole run."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from con2lib.config import Config
from con2lib.data import SkippedImageWarning, load_dataset
from con2lib.data import listing as listing_mod
from con2lib.data.images import list_images

try:
    from tests import fixtures_data as fx
except ImportError:  # tests/ not importable as a package: pytest put tests/ itself on sys.path
    import fixtures_data as fx


def _folder_params(root: Path, **extra: object) -> dict:
    mine = root / "mine"
    return {"dataset": "folder", "image_size": 16, "cache_dir": str(root / "cache"), "calibration_fraction": 0.0,
            "folder_train": str(mine / "train"), "folder_test": str(mine / "test"),
            "folder_normal": ["good"], "folder_anomalous": ["bad"], **extra}


def _make_folder(root: Path) -> Path:
    fx.write_images(root / "mine" / "train", 6, "{i}.png")
    fx.write_images(root / "mine" / "test" / "good", 2, "g{i}.png", seed=2)
    fx.write_images(root / "mine" / "test" / "bad", 3, "b{i}.png", seed=3)
    return root / "mine" / "train"


def test_a_link_to_an_ancestor_lists_each_image_once(tmp_path: Path) -> None:
    train = _make_folder(tmp_path)
    (train / "sub").mkdir()
    (train / "sub" / "loop").symlink_to("..")  # the issue's `ln -s .. D/train/sub/loop`: 41 copies of each image
    assert [p.name for p in list_images(train)] == [f"{i}.png" for i in range(6)]
    data = load_dataset(Config.from_params(_folder_params(tmp_path)))
    assert len(data.train) == 6 and len(data.test) == 5


def test_a_second_link_to_a_folder_or_a_file_lists_it_once(tmp_path: Path) -> None:
    train = _make_folder(tmp_path)
    fx.write_images(train / "sub", 1, "s{i}.png")
    (train / "again").symlink_to(train / "sub")
    (train / "twin.png").symlink_to(train / "0.png")
    assert [p.name for p in list_images(train)] == [f"{i}.png" for i in range(6)] + ["s0.png"]


def test_a_link_to_a_folder_elsewhere_is_still_followed(tmp_path: Path) -> None:
    fx.write_images(tmp_path / "elsewhere", 2, "e{i}.png")
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "linked").symlink_to(tmp_path / "elsewhere")
    assert [p.name for p in list_images(tmp_path / "train")] == ["e0.png", "e1.png"]


def test_dangling_and_self_referencing_links_are_skipped_by_name(tmp_path: Path) -> None:
    train = _make_folder(tmp_path)
    (train / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    os.symlink("self.png", train / "self.png")
    with pytest.warns(SkippedImageWarning, match=r"skipped 2 unreadable image file\(s\)") as caught:
        data = load_dataset(Config.from_params(_folder_params(tmp_path)))
    assert len(data.train) == 6
    assert "dangling.png" in str(caught[0].message) and "self.png" in str(caught[0].message)
    assert len(data.info["skipped_files"]) == 2


def _unreadable(blocked: Path):
    """os.scandir that refuses ``blocked`` as chmod 000 would (root reads any folder, so a real chmod
    proves nothing when the tests run as root)."""
    real = os.scandir

    def scandir(path: os.PathLike | str = ".") -> object:
        if Path(path) == blocked:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    return scandir


def test_an_unreadable_sub_folder_is_reported_like_an_unreadable_file(tmp_path: Path, monkeypatch) -> None:
    train = _make_folder(tmp_path)
    fx.write_images(train / "locked", 2, "l{i}.png")
    monkeypatch.setattr(listing_mod.os, "scandir", _unreadable(train / "locked"))
    with pytest.warns(SkippedImageWarning, match=r"skipped 1 unreadable folder\(s\) under \S+train and the images "
                                                 r"in them .*\n  \S+locked: PermissionError: Permission denied"):
        data = load_dataset(Config.from_params(_folder_params(tmp_path)))
    assert len(data.train) == 6
    with pytest.raises(ValueError, match=r"1 unreadable folder\(s\) under \S+train \(strict=True"):
        load_dataset(Config.from_params(_folder_params(tmp_path, strict=True)))


def test_a_clean_folder_lists_without_warnings(tmp_path: Path) -> None:
    train = _make_folder(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(list_images(train)) == 6
