"""The paper's medical image-folder data sets: Kvasir, BR35H, Pneumonia (chest x-rays) and Melanoma.

Normal classes are fixed by the data (healthy tissue). Kvasir and BR35H have no official test set,
so they get a seeded split (:func:`~con2lib.data.splits.seeded_split`); Pneumonia and Melanoma keep
their official train/test folders.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from con2lib.data.base import OneClassData
from con2lib.data.images import Preprocess
from con2lib.data.splits import (
    PAPER_CROP_RATIO,
    check_fixed_normal,
    class_files,
    find_base,
    image_source,
    missing_data,
    official_split,
    seeded_split,
)
from con2lib.paths import resolve

if TYPE_CHECKING:
    from pathlib import Path

    from con2lib.config import Config

KVASIR_CLASSES = (
    "dyed-lifted-polyps", "dyed-resection-margins", "esophagitis", "normal-cecum",
    "normal-pylorus", "normal-z-line", "polyps", "ulcerative-colitis",
)
KVASIR_NORMAL = (3, 4, 5)
KVASIR_LAYOUT = "<data_root>/kvasir-dataset-v2/<class>/*.jpg with the 8 class folders " + ", ".join(KVASIR_CLASSES)
KVASIR_SOURCE = "https://www.kaggle.com/datasets/meetnagadia/kvasir-dataset"

BR35H_LAYOUT = "<data_root>/no/*.jpg (normal) and <data_root>/yes/*.jpg (tumour); a pred/ folder is ignored"
BR35H_SOURCE = "https://www.kaggle.com/datasets/ahmedhamada0/brain-tumor-detection"

PNEUMONIA_LAYOUT = "<data_root>/chest_xray/{train,test}/{NORMAL,PNEUMONIA}/*.jpeg (val/ is unused)"
PNEUMONIA_SOURCE = "https://www.kaggle.com/datasets/paultimothymooney/chest-xray-pneumonia"

MELANOMA_LAYOUT = "<data_root>/melanoma_cancer_dataset/{train,test}/{benign,malignant}/*.jpg"
MELANOMA_SOURCE = "https://www.kaggle.com/datasets/hasnainjaved/melanoma-skin-cancer-dataset-of-10000-images"


def load_kvasir(cfg: Config) -> OneClassData:
    """Kvasir v2: normal-cecum, -pylorus and -z-line are normal; seeded 80/20 split of the normals.

    Images are resized to ``image_size`` x ``image_size`` without cropping (appendix D), in RGB.
    """
    root = resolve(cfg.data_root)
    check_fixed_normal(cfg, [KVASIR_CLASSES[i] for i in KVASIR_NORMAL])
    base = find_base(root, ["kvasir-dataset-v2", "kvasir-dataset-v2/kvasir-dataset-v2", "kvasir-dataset", ""],
                     lambda p: (p / "normal-cecum").is_dir())
    if base is None:
        raise missing_data(cfg.dataset, root, KVASIR_LAYOUT, KVASIR_SOURCE, "no kvasir-dataset-v2/normal-cecum folder")
    files = class_files(base, dict(enumerate(KVASIR_CLASSES)), cfg.dataset, root, KVASIR_LAYOUT, KVASIR_SOURCE)
    src = image_source(cfg, root, Preprocess(cfg.image_size, "RGB", "square"))
    return seeded_split(src, KVASIR_CLASSES, KVASIR_NORMAL, files, cfg.split_seed, {"data_folder": str(base)})


def load_br35h(cfg: Config) -> OneClassData:
    """BR35H brain MRIs: ``no`` is normal, ``yes`` anomalous; seeded 80/20 split of the normals.

    The JPEGs are grayscale MRIs stored as RGB, so they are loaded as one channel; resize shorter edge
    to ``round(image_size * 256/224)`` and centre-crop (appendix D).
    """
    root = resolve(cfg.data_root)
    names = ("no", "yes")
    check_fixed_normal(cfg, ["no"])
    base = find_base(root, ["", "Br35H", "br35h", "brain-tumor-detection"],
                     lambda p: (p / "no").is_dir() and (p / "yes").is_dir())
    if base is None:
        raise missing_data(cfg.dataset, root, BR35H_LAYOUT, BR35H_SOURCE, "no 'no' and 'yes' folders")
    files = class_files(base, dict(enumerate(names)), cfg.dataset, root, BR35H_LAYOUT, BR35H_SOURCE)
    src = image_source(cfg, root, Preprocess(cfg.image_size, "L", "crop", PAPER_CROP_RATIO))
    return seeded_split(src, names, (0,), files, cfg.split_seed, {"data_folder": str(base)})


def load_pneumonia(cfg: Config) -> OneClassData:
    """Chest x-rays (Kermany et al.): NORMAL is normal; official train/test folders, one channel."""
    root = resolve(cfg.data_root)
    names = ("NORMAL", "PNEUMONIA")
    check_fixed_normal(cfg, ["NORMAL"])
    base = find_base(root, ["chest_xray", "chest_xray/chest_xray", ""],
                     lambda p: (p / "train" / "NORMAL").is_dir())
    if base is None:
        raise missing_data(cfg.dataset, root, PNEUMONIA_LAYOUT, PNEUMONIA_SOURCE, "no chest_xray/train/NORMAL folder")
    prep = Preprocess(cfg.image_size, "L", "crop", PAPER_CROP_RATIO)
    return _official(cfg, root, base, names, (0,), prep, PNEUMONIA_LAYOUT, PNEUMONIA_SOURCE)


def load_melanoma(cfg: Config) -> OneClassData:
    """Melanoma (Javid 2022): benign is normal; official train/test; plain resize (appendix D), RGB."""
    root = resolve(cfg.data_root)
    names = ("benign", "malignant")
    check_fixed_normal(cfg, ["benign"])
    base = find_base(root, ["melanoma_cancer_dataset", "melanoma_cancer_dataset/melanoma_cancer_dataset", ""],
                     lambda p: (p / "train" / "benign").is_dir())
    if base is None:
        raise missing_data(cfg.dataset, root, MELANOMA_LAYOUT, MELANOMA_SOURCE,
                           "no melanoma_cancer_dataset/train/benign folder")
    prep = Preprocess(cfg.image_size, "RGB", "square")
    return _official(cfg, root, base, names, (0,), prep, MELANOMA_LAYOUT, MELANOMA_SOURCE)


def _official(
    cfg: Config,
    root: Path,
    base: Path,
    names: tuple[str, ...],
    normal: tuple[int, ...],
    prep: Preprocess,
    layout: str,
    source: str,
) -> OneClassData:
    """``base/{train,test}/<class>`` folders: normal training folders and every test folder."""
    folders = dict(enumerate(names))
    train = class_files(base / "train", {c: folders[c] for c in normal}, cfg.dataset, root, layout, source)
    test = class_files(base / "test", folders, cfg.dataset, root, layout, source)
    src = image_source(cfg, root, prep)
    info = {"data_folder": str(base), "split": "official train/test"}
    return official_split(src, names, normal, train, test, info)
