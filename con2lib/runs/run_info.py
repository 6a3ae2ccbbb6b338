"""What tells runs apart in the MLflow UI: a name from the config, the code version, the data set, a description.

- :func:`run_name`: ``digits-8-invert-s0`` (data set, normal class, context, loss unless con2, seed).
- :func:`source_tags`: the git commit (MLflow's own ``mlflow.source.git.commit`` too), whether the
  working tree had uncommitted changes, the con2 version and the machine (CPU model, cores).
- :func:`log_data_inputs`: the training and test images as MLflow dataset inputs (name, source,
  digest): the UI's Datasets column.
- :func:`description`: the run's description (``mlflow.note.content``): what ran, the headline AUROCs,
  and which loss curves show progress.
"""

from __future__ import annotations

import os
import platform
import subprocess
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from con2lib.config import Config

TAG_COMMIT, TAG_DIRTY, TAG_VERSION, TAG_MACHINE = "con2.git_commit", "con2.git_dirty", "con2.version", "con2.machine"
TAG_DESCRIPTION = "mlflow.note.content"  # what the MLflow UI shows as the run's description
_SOURCE_KEYS = ("source", "data_folder", "folder_train")  # where each loader says its images came from


def run_name(cfg: Config) -> str:
    """The default run name, e.g. ``digits-8-invert-s0`` or ``cifar10-3-flip-simclr-s2``."""
    loss = "" if cfg.loss == "con2" else f"-{cfg.loss}"
    normal = str(cfg.normal_class).replace(",", "+").replace(" ", "")
    return f"{cfg.dataset}-{normal}-{cfg.context}{loss}-s{cfg.seed}"


def source_tags(root: Path) -> dict[str, str]:
    """Tags naming the code and machine that ran: git commit and dirty flag of ``root`` (when it is a git
    checkout), con2 version, CPU model and cores."""
    try:
        con2_version = version("con2")
    except PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
        from con2lib import __version__ as con2_version
    tags = {TAG_VERSION: con2_version, TAG_MACHINE: machine()}
    commit = _git(root, "rev-parse", "HEAD")
    if commit:
        status = _git(root, "status", "--porcelain")
        tags.update({TAG_COMMIT: commit, "mlflow.source.git.commit": commit,
                     TAG_DIRTY: "true" if status else "false"})
    return tags


def machine() -> str:
    """This machine in words: CPU model and cores (what result tables say they were measured on)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = " ".join(line.split(":", 1)[1].split())
                break
    except OSError:  # not Linux
        pass
    return f"{model}, {os.cpu_count()} cores"


def _git(root: Path, *args: str) -> str | None:
    """``git args`` in ``root``: its output, or None without git or outside a checkout."""
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def log_data_inputs(cfg: Config, data: Any) -> None:
    """Logs the training and test images of the active run as MLflow datasets (contexts training, test).

    Args:
        data: the :class:`con2lib.data.OneClassData` the run trains and scores on (after the
            calibration split: the training images are the ones trained on).
    """
    import mlflow

    source = next((str(data.info[k]) for k in _SOURCE_KEYS if data.info.get(k)), cfg.dataset)
    normal = str(cfg.normal_class).replace(",", "+")
    for context, images, targets in (("training", data.train, None), ("test", data.test, data.test_labels)):
        with warnings.catch_warnings():  # MLflow registers its local source twice and warns it is ambiguous
            warnings.filterwarnings("ignore", "The specified dataset source can be interpreted in multiple ways")
            dataset = mlflow.data.from_numpy(images.numpy(), targets=None if targets is None else targets.numpy(),
                                             source=source, name=f"{cfg.dataset}-{normal}-{context}")
        mlflow.log_input(dataset, context=context)


# the headline AUROCs of a run, as ``con2 run`` and ``con2 sweep`` print them
HEADLINE = {"auroc_nnd": "S_NND", "auroc_lh": "S_LH", "auroc_pixel_knn": "raw-pixel 1-NN (same split)"}


def auroc_summary(metrics: dict[str, float]) -> str:
    """``AUROC S_NND 90.79, S_LH 92.50, raw-pixel 1-NN (same split) 98.46``, or ``""`` before scoring."""
    shown = ", ".join(f"{label} {100 * metrics[key]:.2f}" for key, label in HEADLINE.items() if key in metrics)
    return f"AUROC {shown}" if shown else ""


def description(cfg: Config, metrics: dict[str, float]) -> str:
    """The run's description (markdown): what ran, its AUROCs, and how to read the loss curves."""
    shown = [f"{label} **{100 * metrics[key]:.2f}**" for key, label in
             (("auroc_nnd", "S_NND"), ("auroc_lh", "S_LH"), ("auroc_nnd_notta", "S_NND without TTA"),
              ("auroc_ssd", "SSD")) if key in metrics]
    return (f"CON2 on **{cfg.dataset}**, normal class {cfg.normal_class}, context `{cfg.context}`, loss "
            f"`{cfg.loss}`, {cfg.epochs} epochs, seed {cfg.seed}.\n\n"
            f"AUROC: {', '.join(shown) or 'not logged (the run did not get to scoring)'}.\n\n"
            "Loss charts: read `loss_context` and `loss_content` (both should fall). The total `loss` = "
            "L_context + alpha * L_content rises while alpha anneals from alpha_start to alpha_end: "
            "that is the schedule, not divergence.")
