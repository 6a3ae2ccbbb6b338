"""Builders of tiny data sets in the real on-disk layouts (folder names, file types, npz and pickle keys).

Every builder writes under a given root and returns what a test needs to check the loaded split.
Images are small (20-40 px) random patterns so a full load takes milliseconds.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

KVASIR = (
    "dyed-lifted-polyps", "dyed-resection-margins", "esophagitis", "normal-cecum",
    "normal-pylorus", "normal-z-line", "polyps", "ulcerative-colitis",
)
IMAGENET30 = (
    "acorn", "airliner", "ambulance", "american_alligator", "banjo", "barn", "bikini", "digital_clock",
    "dragonfly", "dumbbell", "forklift", "goblet", "grand_piano", "hotdog", "hourglass", "manhole_cover",
    "mosque", "nail", "parking_meter", "pillow", "revolver", "rotary_dial_telephone", "schooner",
    "snowmobile", "soccer_ball", "stingray", "strawberry", "tank", "toaster", "volcano",
)
CIFAR100_COARSE = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
    "household_furniture", "insects", "large_carnivores", "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes", "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates",
    "people", "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)


def write_image(path: Path, size: tuple[int, int] = (32, 24), mode: str = "RGB", seed: int = 0) -> Path:
    """A random image of ``size`` (w, h) in ``mode``, saved in the format of the file's extension."""
    rng = np.random.default_rng(seed)
    w, h = size
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    img.save(path)
    return path


def write_images(folder: Path, n: int, pattern: str = "{i}.jpg", mode: str = "RGB", seed: int = 0,
                 size: tuple[int, int] = (32, 24)) -> list[Path]:
    return [write_image(folder / pattern.format(i=i), size, mode, seed * 1000 + i) for i in range(n)]


def write_corrupt(folder: Path) -> list[str]:
    """A zero-byte, a truncated and a text-as-JPEG file; returns their names."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    good = write_image(folder / "whole.jpg", (40, 40), seed=99).read_bytes()
    (folder / "whole.jpg").unlink()
    (folder / "truncated.jpg").write_bytes(good[: len(good) * 2 // 3])
    (folder / "text.jpg").write_text("this is not an image\n")
    return ["empty.jpg", "truncated.jpg", "text.jpg"]


def write_junk(folder: Path) -> None:
    """Files that are obviously not images and must be ignored silently."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("hello")
    (folder / "labels.csv").write_text("a,b\n")
    (folder / "Thumbs.db").write_bytes(b"\x00" * 16)
    (folder / ".DS_Store").write_bytes(b"\x00" * 16)
    (folder / "._0.jpg").write_bytes(b"\x00\x05\x16\x07")  # macOS AppleDouble resource fork


def make_medmnist(root: Path, name: str, n_classes: int, resolutions: tuple[int, ...] = (28,),
                  per_class: int = 4) -> None:
    """``<name>[_<res>].npz`` with MedMNIST's keys; ``per_class`` images per class in every split."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for res in resolutions:
        arrays = {}
        for split in ("train", "val", "test"):
            labels = np.repeat(np.arange(n_classes), per_class)[:, None].astype(np.uint8)
            arrays[f"{split}_images"] = rng.integers(0, 256, (len(labels), res, res), dtype=np.uint8)
            arrays[f"{split}_labels"] = labels
        np.savez_compressed(root / (f"{name}.npz" if res == 28 else f"{name}_{res}.npz"), **arrays)


def make_kvasir(root: Path, per_class: int = 5) -> Path:
    base = root / "kvasir-dataset-v2"
    for c, name in enumerate(KVASIR):
        write_images(base / name, per_class, "img-{i}.jpg", seed=c, size=(40, 32))
    return base


def make_br35h(root: Path, per_class: int = 5) -> None:
    for c, name in enumerate(("no", "yes")):
        write_images(root / name, per_class, name[0] + "{i}.jpg", mode="L", seed=c)  # no0.jpg / y0.jpg
    write_images(root / "pred", 2, "pred{i}.jpg", seed=7)


def make_pneumonia(root: Path, counts: dict[str, tuple[int, int]] | None = None) -> Path:
    """chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}; counts: split -> (normal, pneumonia)."""
    counts = counts or {"train": (4, 5), "val": (1, 1), "test": (3, 4)}
    base = root / "chest_xray"
    for split, (n_norm, n_pneu) in counts.items():
        write_images(base / split / "NORMAL", n_norm, "IM-{i:04d}-0001.jpeg", mode="L", seed=1)
        write_images(base / split / "PNEUMONIA", n_pneu, "person{i}_bacteria_1.jpeg", mode="L", seed=2)
    return base


def make_melanoma(root: Path) -> None:
    base = root / "melanoma_cancer_dataset"
    for split, n in (("train", 4), ("test", 3)):
        for c, name in enumerate(("benign", "malignant")):
            write_images(base / split / name, n, "melanoma_{i}.jpg", seed=c, size=(30, 30))


def make_cifar100(root: Path, per_class: int = 2) -> None:
    """cifar-100-python/{train,test,meta} pickled with bytes keys as in the official tarball."""
    base = root / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        coarse = np.repeat(np.arange(20), per_class)
        content = {
            b"filenames": [f"img_{i}.png".encode() for i in range(len(coarse))],
            b"batch_label": f"{split} batch".encode(),
            b"fine_labels": [int(c) * 5 for c in coarse],
            b"coarse_labels": [int(c) for c in coarse],
            b"data": rng.integers(0, 256, (len(coarse), 3072), dtype=np.uint8),
        }
        with open(base / split, "wb") as f:
            pickle.dump(content, f, protocol=2)
    meta = {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [n.encode() for n in CIFAR100_COARSE]}
    with open(base / "meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)


def make_imagenet30(root: Path, n_train: int = 2, n_test: int = 1, doubled: bool = False) -> None:
    """ImageNet30 with test images one folder deeper (as shipped); ``doubled``: one_class_test/one_class_test/."""
    test = root / "one_class_test" / "one_class_test" if doubled else root / "one_class_test"
    for c, name in enumerate(IMAGENET30):
        write_images(root / "one_class_train" / name, n_train, "n{i:08d}.JPEG", seed=c)
        write_images(test / name / "1", n_test, "{i}.JPEG", seed=100 + c)
    (test / "airliner" / "._1.JPEG").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble debris of the archive


def make_dogsvscats(root: Path, per_class: int = 5) -> None:
    for c, animal in enumerate(("cat", "dog")):
        write_images(root / "train", per_class, animal + ".{i}.jpg", seed=c, size=(40, 30))


def make_muffin(root: Path) -> None:
    for split, n in (("train", 4), ("test", 3)):
        for c, name in enumerate(("chihuahua", "muffin")):
            write_images(root / split / name, n, "img_{i}.jpg", seed=c)
