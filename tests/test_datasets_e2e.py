"""Every data set name trains and evaluates end to end on its fixture through the real CLI (issue #3).

One ``con2 sweep --workers 2`` over a grid of one params file per data set (its ``data_root``,
``normal_class``, folders) on a tiny config: papermill kernel start-up dominates, so a single sweep
with two workers is much cheaper than sixteen ``con2 run`` calls. Each point is the code path of
``con2 run`` (``con2lib.runs.runner.execute_run``). The fixtures are written in the layout a user
downloads (``tests/fixtures_data.py``; MNIST's IDX files and CIFAR-10's pickles below).

CIFAR-10 goes through torchvision, which checks each file's md5 against the official archive's; the
tiny fixture cannot match them, so the executed notebook is a copy with one cell (``MD5_CELL``) that
reduces torchvision's CIFAR check to "the file exists" for that data set only. Everything else is
the shipped notebook.
"""

from __future__ import annotations

import math
import pickle
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from con2lib.data import DATASETS
from con2lib.sweeps.grid import TAG_POINT

from conftest import ROOT, con2_command, make_experiment, notebook_with_cell

try:
    from tests import fixtures_data as fx
except ImportError:  # tests/ not importable as a package: pytest put tests/ itself on sys.path
    import fixtures_data as fx

EXPERIMENT = "datasets-e2e"
TINY_RUN = {"image_size": 16, "width": 0.125, "epochs": 1, "batch_size": 4, "tta": 2, "eval_batch_size": 64,
            "max_train": 16, "max_test": 40, "plot_points": 20, "calibration_fraction": 0.0, "device": "cpu",
            "experiment": EXPERIMENT}
MD5_CELL = """
if dataset == "cifar10":  # test fixture: tiny CIFAR-10 pickles cannot match the official md5 sums
    import os
    import torchvision.datasets.cifar as _cifar
    _cifar.check_integrity = lambda fpath, md5=None: os.path.isfile(fpath)
"""

MNIST_CLASSES = ("0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six", "7 - seven",
                 "8 - eight", "9 - nine")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def write_idx(folder: Path, split: str, per_class: int, seed: int) -> None:
    """``<split>-images-idx3-ubyte`` and ``<split>-labels-idx1-ubyte`` (uncompressed, as torchvision keeps them)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
    images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    header = np.array([0x0803, len(labels), 28, 28], dtype=">i4").tobytes()
    (folder / f"{split}-images-idx3-ubyte").write_bytes(header + images.tobytes())
    (folder / f"{split}-labels-idx1-ubyte").write_bytes(np.array([0x0801, len(labels)], dtype=">i4").tobytes()
                                                       + labels.tobytes())


def make_torchvision_mnist(root: Path, folder: str) -> None:
    """torchvision's ``<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``."""
    write_idx(root / folder / "raw", "train", per_class=4, seed=0)
    write_idx(root / folder / "raw", "t10k", per_class=2, seed=1)


def make_cifar10(root: Path) -> None:
    """``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` with the tarball's keys."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = list(range(10))  # one image per class per batch: 5 training images of each class
        batch = {"batch_label": name, "labels": labels, "filenames": [f"{name}_{i}.png" for i in labels],
                 "data": rng.integers(0, 256, (10, 3072), dtype=np.uint8)}
        with open(base / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CIFAR10_CLASSES), "num_cases_per_batch": 10, "num_vis": 3072}, f,
                    protocol=2)


def make_folder(root: Path) -> dict[str, Any]:
    fx.write_images(root / "mine" / "train", 4, "{i}.png")
    fx.write_images(root / "mine" / "test" / "good", 2, "g{i}.png")
    fx.write_images(root / "mine" / "test" / "bad", 3, "b{i}.jpg", seed=3)
    return {"folder_train": str(root / "mine" / "train"), "folder_test": str(root / "mine" / "test"),
            "folder_normal": ["good"], "folder_anomalous": ["bad"]}


def others(names: tuple[str, ...], *normal: str) -> tuple[str, ...]:
    return tuple(n for n in names if n not in normal)


# name -> (fixture builder (may return extra params), params, normal classes, anomalous classes)
Builder = Callable[[Path], Any]
CASES: dict[str, tuple[Builder, dict[str, Any], tuple[str, ...], tuple[str, ...]]] = {
    "digits": (lambda r: None, {"normal_class": 1}, ("1",), others(tuple("0123456789"), "1")),
    "mnist": (lambda r: make_torchvision_mnist(r, "MNIST"), {"normal_class": 3},
              ("3 - three",), others(MNIST_CLASSES, "3 - three")),
    "fashionmnist": (lambda r: make_torchvision_mnist(r, "FashionMNIST"), {"normal_class": "Trouser"},
                     ("Trouser",), others(FASHION_CLASSES, "Trouser")),
    "cifar10": (make_cifar10, {"normal_class": "cat"}, ("cat",), others(CIFAR10_CLASSES, "cat")),
    "breastmnist": (lambda r: fx.make_medmnist(r, "breastmnist", 2), {}, ("normal, benign",), ("malignant",)),
    "octmnist": (lambda r: fx.make_medmnist(r, "octmnist", 4), {}, ("normal",),
                 ("choroidal neovascularization", "diabetic macular edema", "drusen")),
    "pneumoniamnist": (lambda r: fx.make_medmnist(r, "pneumoniamnist", 2), {}, ("normal",), ("pneumonia",)),
    "kvasir": (fx.make_kvasir, {}, ("normal-cecum", "normal-pylorus", "normal-z-line"),
               others(fx.KVASIR, "normal-cecum", "normal-pylorus", "normal-z-line")),
    "br35h": (fx.make_br35h, {}, ("no",), ("yes",)),
    "pneumonia": (fx.make_pneumonia, {}, ("NORMAL",), ("PNEUMONIA",)),
    "melanoma": (fx.make_melanoma, {}, ("benign",), ("malignant",)),
    "cifar100": (lambda r: fx.make_cifar100(r, per_class=4), {"normal_class": "fish"},
                 ("fish",), others(fx.CIFAR100_COARSE, "fish")),
    "imagenet30": (lambda r: fx.make_imagenet30(r, n_train=4), {"normal_class": 2},
                   ("ambulance",), others(fx.IMAGENET30, "ambulance")),
    "dogsvscats": (fx.make_dogsvscats, {"normal_class": "dog"}, ("dog",), ("cat",)),
    "muffinvschihuahua": (fx.make_muffin, {"normal_class": 1}, ("muffin",), ("chihuahua",)),
    "folder": (make_folder, {}, ("good",), ("bad",)),
}


def test_every_data_set_has_a_case() -> None:
    assert set(CASES) == set(DATASETS)


@pytest.fixture(scope="module")
def sweep(module_store: dict[str, str]) -> dict[str, Any]:
    """Writes every fixture and its params file, runs one sweep over all of them; returns its outcome."""
    folder = Path(module_store["CON2_RUNS_DIR"]).parent
    make_experiment(EXPERIMENT, folder)
    files = []
    for name, (build, params, _, _) in CASES.items():
        root = folder / "data" / name
        root.mkdir(parents=True)
        extra = build(root)
        extra = extra if isinstance(extra, dict) else {}  # some builders return their base folder
        path = folder / "params" / f"{name}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump({"dataset": name, "data_root": str(root), **params, **extra}))
        files.append(str(path))
    base = folder / "tiny.yaml"
    base.write_text(yaml.safe_dump({**TINY_RUN, "cache_dir": str(folder / "cache")}))
    grid = folder / "grid.yaml"
    grid.write_text(yaml.safe_dump({"base": str(base), "grid": {"params": files}}))
    notebook = notebook_with_cell(folder, MD5_CELL, after="Config.from_namespace(globals())")
    start = time.monotonic()
    proc = subprocess.run(con2_command("sweep", str(grid), "--workers", "2", "--notebook", str(notebook)),
                          cwd=ROOT, env=module_store, capture_output=True, text=True, timeout=1200)
    seconds = time.monotonic() - start
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    by_name = {r.data.params.get("dataset"): r for r in runs if TAG_POINT in r.data.tags}
    return {"proc": proc, "seconds": seconds, "runs": by_name, "logs": Path(module_store["CON2_RUNS_DIR"]) / "sweeps"}


def _log_tail(outcome: dict[str, Any], run: Any) -> str:
    """The worker log of a run's point (why it failed), else the sweep's own output."""
    if run is not None:
        for log in outcome["logs"].glob(f"*/point-{run.data.tags[TAG_POINT]}.log"):
            return log.read_text()[-3000:]
    return outcome["proc"].stdout[-3000:] + outcome["proc"].stderr[-3000:]


def test_sweep_over_every_data_set_finishes(sweep: dict[str, Any]) -> None:
    proc = sweep["proc"]
    print(f"sweep of {len(CASES)} data sets: {sweep['seconds']:.0f} s")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert f"{len(CASES)} points: {len(CASES)} done, 0 running, 0 failed, 0 pending" in proc.stdout


@pytest.mark.parametrize("name", list(CASES))
def test_data_set_trains_and_evaluates_end_to_end(sweep: dict[str, Any], name: str) -> None:
    _, params, normal, anomalous = CASES[name]
    run = sweep["runs"].get(name)
    assert run is not None, _log_tail(sweep, None)
    assert run.info.status == "FINISHED", f"{run.data.tags.get('con2.failure')}\n{_log_tail(sweep, run)}"
    for metric in ("auroc_nnd", "auroc_lh"):
        value = run.data.metrics[metric]
        assert math.isfinite(value) and 0 <= value <= 1, (metric, value)
    logged = run.data.params
    assert logged["dataset"] == name
    assert logged["normal_class"] == str(params.get("normal_class", 0))
    assert logged["data.normal_classes"] == ",".join(normal)
    assert logged["data.anomalous_classes"] == ",".join(anomalous)
    n_test, n_anomalous = int(logged["data.n_test"]), int(logged["data.n_test_anomalous"])
    assert int(logged["data.n_train"]) >= TINY_RUN["batch_size"] and 0 < n_anomalous < n_test
