"""Every data set loads from its real on-disk layout through ``load_dataset`` (the code a user runs).

Data sets are written by ``fixtures_data`` in the layout the user downloads: real folder names, JPEG/PNG
files written by PIL, MedMNIST's npz keys, CIFAR-100's pickle keys.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import con2lib.data.decoding as decoding_mod
import con2lib.data.medmnist as medmnist_mod
from con2lib.cli import load_params
from con2lib.config import Config
from con2lib.data import DATASETS, OneClassData, SkippedImageWarning, load_dataset
from con2lib.data.images import Preprocess, convert_mode, decode_file

try:
    from tests import fixtures_data as fx
except ImportError:  # tests/ not importable as a package: pytest put tests/ itself on sys.path
    import fixtures_data as fx

ROOT = Path(__file__).resolve().parents[1]
SIZE = 16

# name -> (builder, extra params, channels, n_train, n_test, n_anomalous, normal classes)
CASES = {
    "breastmnist": (lambda r: fx.make_medmnist(r, "breastmnist", 2), {}, 1, 4, 8, 4, ("normal, benign",)),
    "octmnist": (lambda r: fx.make_medmnist(r, "octmnist", 4), {}, 1, 4, 16, 12, ("normal",)),
    "pneumoniamnist": (lambda r: fx.make_medmnist(r, "pneumoniamnist", 2), {}, 1, 4, 8, 4, ("normal",)),
    "kvasir": (fx.make_kvasir, {}, 3, 12, 28, 25, ("normal-cecum", "normal-pylorus", "normal-z-line")),
    "br35h": (fx.make_br35h, {}, 1, 4, 6, 5, ("no",)),
    "pneumonia": (fx.make_pneumonia, {}, 1, 4, 7, 4, ("NORMAL",)),
    "melanoma": (fx.make_melanoma, {}, 3, 4, 6, 3, ("benign",)),
    "cifar100": (fx.make_cifar100, {"normal_class": "fish"}, 3, 2, 40, 38, ("fish",)),
    "imagenet30": (fx.make_imagenet30, {"normal_class": 2}, 3, 2, 30, 29, ("ambulance",)),
    "dogsvscats": (fx.make_dogsvscats, {"normal_class": "dog"}, 3, 4, 6, 5, ("dog",)),
    "muffinvschihuahua": (fx.make_muffin, {"normal_class": 1}, 3, 4, 6, 3, ("muffin",)),
    "folder": (lambda r: _make_folder(r), None, 3, 4, 5, 3, ("good",)),
}
CACHED = [n for n in CASES if n != "cifar100"]  # CIFAR-100 is an in-memory array, nothing to decode


def _make_folder(root: Path) -> None:
    fx.write_images(root / "mine" / "train", 4, "{i}.png")
    fx.write_images(root / "mine" / "test" / "good", 2, "g{i}.png")
    fx.write_images(root / "mine" / "test" / "bad", 3, "b{i}.jpg", seed=3)


def _params(name: str, root: Path, **extra: object) -> dict:
    base = {"dataset": name, "data_root": str(root / "data"), "image_size": SIZE, "cache_dir": str(root / "cache")}
    if name == "folder":
        mine = root / "data" / "mine"
        base |= {"folder_train": str(mine / "train"), "folder_test": str(mine / "test"),
                 "folder_normal": ["good"], "folder_anomalous": ["bad"]}
    return base | (CASES[name][1] or {}) | extra


def _load(name: str, root: Path, **extra: object) -> OneClassData:
    return load_dataset(Config.from_params(_params(name, root, **extra)))


@pytest.mark.parametrize("name", list(CASES))
def test_loads_real_layout(name: str, tmp_path: Path) -> None:
    build, _, channels, n_train, n_test, n_anom, normal = CASES[name]
    build(tmp_path / "data")
    data = _load(name, tmp_path)
    assert data.train.dtype == data.test.dtype == torch.uint8
    assert tuple(data.train.shape) == (n_train, channels, SIZE, SIZE)
    assert tuple(data.test.shape) == (n_test, channels, SIZE, SIZE)
    assert int(data.test_labels.sum()) == n_anom and len(data.test_labels) == n_test
    assert data.normal_classes == normal
    assert set(data.normal_classes) | set(data.anomalous_classes) == set(data.class_names)
    anomalous_idx = [data.class_names.index(c) for c in data.anomalous_classes]
    assert torch.equal(data.test_labels.bool(), torch.isin(data.test_classes, torch.tensor(anomalous_idx)))
    assert data.info["skipped_files"] == [] and data.info["channels"] == channels


@pytest.mark.parametrize("name", CACHED)
def test_cache_written_then_used(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    CASES[name][0](tmp_path / "data")
    first = _load(name, tmp_path)
    assert list((tmp_path / "cache").glob(f"{name}_{SIZE}*.npz"))
    assert not list((tmp_path / "cache").glob("*.tmp"))

    class DecodedAgain(BaseException):  # not an Exception: the decoder's skip-on-error must not swallow it
        pass

    def boom(*args: object, **kwargs: object) -> None:
        raise DecodedAgain

    monkeypatch.setattr(decoding_mod, "decode_file", boom)
    monkeypatch.setattr(medmnist_mod, "preprocess_arrays", boom)
    second = _load(name, tmp_path)
    assert torch.equal(first.train, second.train) and torch.equal(first.test, second.test)
    assert torch.equal(first.test_classes, second.test_classes)


def test_changed_file_invalidates_cache(tmp_path: Path) -> None:
    fx.make_br35h(tmp_path / "data")
    first = _load("br35h", tmp_path)
    target = tmp_path / "data" / "yes" / "y0.jpg"
    fx.write_image(target, (50, 50), "L", seed=42)
    os.utime(target, ns=(1, 1))
    second = _load("br35h", tmp_path)
    assert not torch.equal(first.test, second.test)
    # one entry per class folder; the edited folder's new entry replaced its old one
    assert len(list((tmp_path / "cache").glob("br35h_*.npz"))) == 2


def test_image_size_and_mode_are_part_of_the_key(tmp_path: Path) -> None:
    fx.make_dogsvscats(tmp_path / "data")
    assert _load("dogsvscats", tmp_path).train.shape[-1] == SIZE
    assert _load("dogsvscats", tmp_path, image_size=24).train.shape[-1] == 24


def test_cache_inside_data_folder_is_refused(tmp_path: Path) -> None:
    fx.make_br35h(tmp_path / "data")
    with pytest.raises(ValueError, match="inside the data folder"):
        _load("br35h", tmp_path, cache_dir=str(tmp_path / "data" / "cache"))


MISSING = {  # what the message must contain besides the data_root
    "breastmnist": (r"breastmnist_64\.npz", "medmnist"),
    "octmnist": (r"octmnist_224\.npz", "medmnist"),
    "pneumoniamnist": (r"pneumoniamnist\.npz", "medmnist"),
    "kvasir": (r"kvasir-dataset-v2/<class>/\*\.jpg", "kaggle.com/datasets/meetnagadia/kvasir-dataset"),
    "br35h": (r"<data_root>/no/\*\.jpg", "kaggle.com/datasets/ahmedhamada0/brain-tumor-detection"),
    "pneumonia": (r"chest_xray/\{train,test\}/\{NORMAL,PNEUMONIA\}", "paultimothymooney/chest-xray-pneumonia"),
    "melanoma": (r"melanoma_cancer_dataset/\{train,test\}/\{benign,malignant\}", "hasnainjaved/melanoma-skin-cancer"),
    "cifar100": (r"cifar-100-python/\{train,test,meta\}", r"cs\.toronto\.edu/~kriz/cifar\.html"),
    "imagenet30": (r"one_class_train/<class>", "hendrycks/ss-ood"),
    "dogsvscats": (r"train/cat\.<n>\.jpg", "kaggle.com/competitions/dogs-vs-cats"),
    "muffinvschihuahua": (r"\{train,test\}/\{chihuahua,muffin\}", "samuelcortinhas/muffin-vs-chihuahua"),
}


@pytest.mark.parametrize("name", list(MISSING))
def test_missing_data_names_path_layout_and_source(name: str, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    layout, source = MISSING[name]
    with pytest.raises(FileNotFoundError, match=f"(?s){name}.*{re.escape(str(tmp_path / 'data'))}.*{layout}.*{source}"):
        _load(name, tmp_path)


def test_incomplete_data_names_missing_folder(tmp_path: Path) -> None:
    base = fx.make_kvasir(tmp_path / "data", per_class=2)
    for f in (base / "polyps").iterdir():
        f.unlink()
    (base / "polyps").rmdir()
    with pytest.raises(FileNotFoundError, match=r"polyps.*does not exist"):
        _load("kvasir", tmp_path)


def test_imagenet30_doubled_test_folder(tmp_path: Path) -> None:
    fx.make_imagenet30(tmp_path / "data", doubled=True)
    data = _load("imagenet30", tmp_path, normal_class="toaster")
    assert len(data.test) == 30 and data.normal_classes == ("toaster",) and len(data.class_names) == 30


def test_dogsvscats_hints_at_unzipping(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.zip").write_bytes(b"PK")
    with pytest.raises(FileNotFoundError, match="unzip"):
        _load("dogsvscats", tmp_path)


@pytest.mark.parametrize("data_root", ["data", "data/chest_xray", "data/chest_xray/chest_xray"])
def test_lenient_data_root(data_root: str, tmp_path: Path) -> None:
    nested = data_root.endswith("chest_xray/chest_xray")
    fx.make_pneumonia(tmp_path / "data" / "chest_xray" if nested else tmp_path / "data")
    assert len(_load("pneumonia", tmp_path, data_root=str(tmp_path / data_root)).train) == 4


def test_corrupt_files_skipped_with_warning_and_logged(tmp_path: Path) -> None:
    base = fx.make_kvasir(tmp_path / "data", per_class=3)
    bad = fx.write_corrupt(base / "polyps")
    fx.write_image(base / "normal-cecum" / "tiny.png", (5, 5))
    with pytest.warns(SkippedImageWarning) as record:
        data = _load("kvasir", tmp_path)
    message = "\n".join(str(w.message) for w in record)
    for name in [*bad, "tiny.png"]:
        assert name in message
        assert any(name in s for s in data.info["skipped_files"])
    assert "too small" in message
    assert len(data.info["skipped_files"]) == 4
    assert int(data.test_labels.sum()) == 5 * 3  # the corrupt polyps files are gone, the good ones stay
    with pytest.warns(SkippedImageWarning):  # served from the cache: still reported
        assert len(_load("kvasir", tmp_path).info["skipped_files"]) == 4


@pytest.mark.parametrize("cached", [False, True])
def test_strict_names_the_bad_file(cached: bool, tmp_path: Path) -> None:
    fx.make_br35h(tmp_path / "data")
    (tmp_path / "data" / "yes" / "y_broken.jpg").write_bytes(b"")
    if cached:
        with pytest.warns(SkippedImageWarning):
            _load("br35h", tmp_path)
    with pytest.raises(ValueError, match=r"y_broken\.jpg"):
        _load("br35h", tmp_path, strict=True)


def test_non_image_files_ignored_silently(tmp_path: Path) -> None:
    fx.make_melanoma(tmp_path / "data")
    fx.write_junk(tmp_path / "data" / "melanoma_cancer_dataset" / "test" / "malignant")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedImageWarning)
        data = _load("melanoma", tmp_path)
    assert len(data.test) == 6 and data.info["skipped_files"] == []


def test_odd_modes_converted(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "mine"
    fx.write_image(folder / "train" / "rgb.jpg")
    fx.write_image(folder / "train" / "rgba.png", mode="RGBA")
    fx.write_image(folder / "train" / "palette.png", mode="P")
    fx.write_image(folder / "train" / "cmyk.jpg", mode="CMYK")
    fx.write_image(folder / "train" / "gray_alpha.png", mode="LA")
    fx.write_image(folder / "train" / "deep.png", mode="I;16")
    fx.write_images(folder / "test" / "good", 1)
    fx.write_images(folder / "test" / "bad", 1, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = _load("folder", tmp_path)
    assert tuple(data.train.shape) == (6, 3, SIZE, SIZE) and data.info["skipped_files"] == []


def test_sixteen_bit_scaled_not_clipped() -> None:
    ramp = Image.fromarray(np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8))
    assert ramp.mode == "I;16"
    out = np.asarray(convert_mode(ramp, "L"))
    assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) > 32
    small = Image.fromarray(np.full((8, 8), 200, dtype=np.uint16))  # 8-bit values in a 16-bit file stay
    assert np.asarray(convert_mode(small, "L")).max() == 200


def test_grayscale_folder_loads_one_channel(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "mine"
    fx.write_images(folder / "train", 3, "{i}.png", mode="L")
    fx.write_images(folder / "test" / "good", 1, "{i}.png", mode="L")
    fx.write_images(folder / "test" / "bad", 1, "{i}.png", mode="I;16")
    assert _load("folder", tmp_path).train.shape[1] == 1


def test_folder_errors(tmp_path: Path) -> None:
    _make_folder(tmp_path / "data")
    train = tmp_path / "data" / "mine" / "train"
    for f in train.iterdir():
        f.unlink()
    fx.write_junk(train)
    with pytest.raises(FileNotFoundError, match=re.escape(f"no normal training images in folder_train='{train}'")):
        _load("folder", tmp_path)
    fx.write_corrupt(train)
    no_usable = re.escape(f"no usable normal training images in {train}")
    with pytest.warns(SkippedImageWarning), pytest.raises(ValueError, match=no_usable):
        _load("folder", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"sub-folder .*missing.* does not exist; sub-folders .* bad, good"):
        _load("folder", tmp_path, folder_anomalous=["missing"])
    with pytest.raises(ValueError, match="folder_normal and folder_anomalous"):
        _load("folder", tmp_path, folder_anomalous=[])
    with pytest.raises(ValueError, match="both folder_normal and folder_anomalous"):
        _load("folder", tmp_path, folder_anomalous=["good"])


def test_folder_unlisted_subfolder_warns(tmp_path: Path) -> None:
    _make_folder(tmp_path / "data")
    fx.write_images(tmp_path / "data" / "mine" / "test" / "unsure", 2)
    with pytest.warns(UserWarning, match="unsure"):
        data = _load("folder", tmp_path)
    assert data.info["ignored_test_folders"] == ["unsure"] and len(data.test) == 5


def test_seeded_split_is_recorded_and_reproducible(tmp_path: Path) -> None:
    fx.make_dogsvscats(tmp_path / "data", per_class=10)
    a, b = _load("dogsvscats", tmp_path), _load("dogsvscats", tmp_path)
    c = _load("dogsvscats", tmp_path, split_seed=1)
    assert torch.equal(_load("dogsvscats", tmp_path, seed=5).train, a.train)  # training seed keeps the split
    assert a.info["split_seed"] == 0 and a.info["train_fraction"] == 0.8 and c.info["split_seed"] == 1
    assert len(a.train) == 8 and torch.equal(a.train, b.train)
    assert not torch.equal(a.train, c.train)  # a different 8 of the 10 dogs
    assert set(map(bytes, a.train.numpy())) | set(map(bytes, a.test[a.test_labels == 0].numpy())) == set(
        map(bytes, c.train.numpy())) | set(map(bytes, c.test[c.test_labels == 0].numpy()))


def test_medmnist_resolution_choice(tmp_path: Path) -> None:
    fx.make_medmnist(tmp_path / "data", "octmnist", 4, resolutions=(28, 64, 128))
    assert _load("octmnist", tmp_path, image_size=28).info["source_resolution"] == 28
    assert _load("octmnist", tmp_path, image_size=32).info["source_resolution"] == 64
    assert _load("octmnist", tmp_path, image_size=160).info["source_resolution"] == 128


def test_fixed_normal_class_rejects_other_choices(tmp_path: Path) -> None:
    fx.make_kvasir(tmp_path / "data", per_class=2)
    with pytest.raises(ValueError, match="normal_class=2 does not apply"):
        _load("kvasir", tmp_path, normal_class=2)


def test_resize_crop_geometry_and_exif(tmp_path: Path) -> None:
    half = np.zeros((20, 40), dtype=np.uint8)
    half[:, 20:] = 255  # left black, right white
    path = tmp_path / "half.png"
    Image.fromarray(half).save(path)
    out = decode_file(path, Preprocess(10, "L", "crop", 1.0))  # 20x40 -> 10x20 -> centre 10x10
    assert out.shape == (1, 10, 10) and out[0, :, 0].max() < 128 < out[0, :, -1].min()
    assert decode_file(path, Preprocess(10, "RGB", "square")).shape == (3, 10, 10)
    assert Preprocess(224, "L", "crop", 256 / 224).describe().startswith("resize shorter edge to 256, centre crop 224")
    exif = Image.Exif()
    exif[0x0112] = 3  # orientation: rotated 180 degrees
    Image.fromarray(half).convert("RGB").save(tmp_path / "rot.jpg", exif=exif, quality=95)
    rotated = decode_file(tmp_path / "rot.jpg", Preprocess(10, "L", "square"))
    assert rotated[0, :, 0].min() > 128 > rotated[0, :, -1].max()  # shown as a viewer shows it


def test_every_params_file_is_a_valid_config() -> None:
    # params/<dataset>/<context>.yaml; sweeps/ and presets/ hold other kinds of files
    files = sorted(p for p in (ROOT / "params").glob("*/*.yaml") if p.parent.name not in ("sweeps", "presets"))
    seen = set()
    for path in files:
        cfg = Config.from_params(load_params(path))  # extends: paper.yaml (the protocol, tests/test_paper.py)
        assert cfg.dataset == path.parent.name and cfg.context == path.stem and cfg.experiment == cfg.dataset
        seen.add(cfg.dataset)
    assert seen >= set(CASES) | {"cifar10"}
    assert seen <= set(DATASETS)
