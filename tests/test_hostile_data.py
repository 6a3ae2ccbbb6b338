"""Hostile data folders (issues 16 and 21): link loops, duplicate links, dangling and self-referencing links,
unreadable sub-folders, links into the test folder or /proc, float images. Each lists every real image once,
skips what cannot be read by name, and never fails the whole run."""

from __future__ import annotations

import os
import re
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from con2lib.config import Config
from con2lib.data import SkippedImageWarning, load_dataset
from con2lib.data import listing as listing_mod
from con2lib.data.images import Preprocess, list_images, prepare_image

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


# --- issue 21: links into the test folder, kernel file systems, float images ------------------------------------


@pytest.mark.parametrize("link", ["more", "loop"])
def test_a_link_in_folder_train_into_the_test_folder_is_an_overlap(tmp_path: Path, link: str) -> None:
    train = _make_folder(tmp_path)
    # `ln -s ../test/good d/train/more` and `ln -s .. d/train/loop`: test images listed under training names
    (train / link).symlink_to(Path("..") / "test" / "good" if link == "more" else Path(".."))
    n, first = (2, "g0") if link == "more" else (5, "test/bad/b0")  # the loop reaches every test image
    with pytest.warns(UserWarning, match=rf"{n} image\(s\) are both training and test images \(e\.g\. \S+/train/"
                                         rf"{link}/{first}\.png, a link to \S+/test/\S+\.png\)"):
        load_dataset(Config.from_params(_folder_params(tmp_path)))


@pytest.mark.parametrize("name", ["folder_train", "folder_test", "data_root"])
def test_data_folders_under_proc_sys_dev_are_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / "self").symlink_to("/proc/self")  # a link there is resolved, too
    for value in ("/proc/self", "/sys", "/dev", str(tmp_path / "self")):
        with pytest.raises(ValueError, match=rf"parameter {name}='{value}' is invalid: expected a folder of image "
                                             r"files, not under /proc, /sys, /dev"):
            Config.from_params(_folder_params(tmp_path, **{name: value}))


def test_a_link_to_proc_inside_a_data_folder_is_not_walked(tmp_path: Path) -> None:
    train = _make_folder(tmp_path)
    (train / "everything").symlink_to("/proc/self")  # /proc/self/root: the whole file system
    with pytest.warns(SkippedImageWarning, match=r"\S+/everything: links to /proc/\d+, a kernel file system"):
        assert [p.name for p in list_images(train)] == [f"{i}.png" for i in range(6)]


def _float_tiff(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.float32), mode="F").save(path)
    return path


def test_float_images_in_0_1_are_scaled_as_files_and_as_arrays(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).random((16, 16), dtype=np.float32)  # [0, 1): a float32 TIFF of a scanner
    want = np.round(pixels.astype(np.float64) * 255).astype(np.uint8)
    prep = Preprocess(16, "L", "square")
    from_file = prepare_image(_float_tiff(tmp_path / "f.tif", pixels), prep)[0]
    np.testing.assert_array_equal(from_file, want)  # not 0/1 pixels: a black image
    np.testing.assert_array_equal(prepare_image(pixels, prep)[0], want)
    # the same through a folder data set
    train = _make_folder(tmp_path)
    for f in train.iterdir():
        f.unlink()
    for i in range(3):
        _float_tiff(train / f"{i}.tif", pixels)
    data = load_dataset(Config.from_params(_folder_params(tmp_path)))
    assert int(data.train.max()) > 200


def test_float_images_with_negative_or_nan_pixels_are_refused_by_name(tmp_path: Path) -> None:
    train = _make_folder(tmp_path)
    _float_tiff(train / "negative.tif", np.full((16, 16), -0.5))
    _float_tiff(train / "nan.tif", np.full((16, 16), np.nan))
    with pytest.warns(SkippedImageWarning) as caught:
        data = load_dataset(Config.from_params(_folder_params(tmp_path)))
    text = str(caught[0].message)
    assert re.search(r"negative\.tif: ValueError: image pixels range from -0\.5 to -0\.5: expected values >= 0", text)
    assert re.search(r"nan\.tif: ValueError: image pixels are NaN or infinite", text)
    assert len(data.train) == 6
    with pytest.raises(ValueError, match="image pixels are NaN or infinite"):
        prepare_image(np.full((16, 16), np.nan), Preprocess(16, "L", "square"))


def test_a_fifo_with_an_image_name_is_skipped_not_opened(tmp_path: Path) -> None:
    train = _make_folder(tmp_path)
    os.mkfifo(train / "pipe.png")  # opened for reading, it waits for a writer for ever
    outcome: list[object] = []

    def load() -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outcome.append((load_dataset(Config.from_params(_folder_params(tmp_path))), caught))

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(30)
    if worker.is_alive():  # the fix is gone: unblock the reader so the test ends
        with open(train / "pipe.png", "wb"):
            pass
        worker.join(10)
        pytest.fail("loading the folder blocked on the FIFO")
    data, caught = outcome[0]
    assert len(data.train) == 6
    assert any(re.search(r"pipe\.png: ValueError: not a regular file \(a FIFO, socket or device\): not opened",
                         str(w.message)) for w in caught), [str(w.message) for w in caught]
