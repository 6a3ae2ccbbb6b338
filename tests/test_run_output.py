"""What a person sees (issue 21): warnings and phases of ``con2 run`` and ``con2 sweep``, each point's AUROCs,
the sweep's results table, run names, a re-run sweep's parent that keeps no stale failure, the long-run
warning and the CPU folder example, the MLflow UI's experiment tags and link, compare's best cells and
explore's PCA axes.

Two tests execute the training notebook on a tiny ``folder`` data set with unreadable training images;
the others create runs with the MLflow client and run no training.
"""

from __future__ import annotations

import io
import re
import socket
import subprocess
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from con2lib.config import Config
from con2lib.runs import tracking
from con2lib.runs.progress import LongRunWarning, StreamEcho, forward_warnings
from con2lib.runs.run_info import run_name
from con2lib.sweeps.backends import run_sweep
from con2lib.sweeps.grid import TAG_ROLE, TAG_SWEEP, load_sweep
from con2lib.sweeps.report import point_name

import fixtures_data as fx
from conftest import ROOT, TINY, con2_command, make_experiment

PHASES = ("phase: importing torch and MLflow", "phase: loading data: folder", "phase: training: 2 epochs on cpu",
          "epoch 2/2", "phase: scoring the test images", "phase: threshold and MLflow model",
          "phase: saving the checkpoint", "phase: figures")


def folder_params(tmp_path: Path, experiment: str) -> dict[str, Any]:
    """TINY on a folder data set whose training folder holds three unreadable files."""
    root = tmp_path / "mine"
    fx.write_images(root / "train", 12, "{i}.png")
    fx.write_corrupt(root / "train")
    fx.write_images(root / "test" / "good", 4, "g{i}.png", seed=1)
    fx.write_images(root / "test" / "bad", 4, "b{i}.png", seed=3)
    return {**TINY, "dataset": "folder", "folder_train": str(root / "train"), "folder_test": str(root / "test"),
            "folder_normal": ["good"], "folder_anomalous": ["bad"], "experiment": experiment,
            "normal_class": 0, "cache_dir": str(tmp_path / "cache")}


def assert_in_order(text: str, needles: tuple[str, ...]) -> None:
    at = 0
    for needle in needles:
        found = text.find(needle, at)
        assert found >= 0, f"{needle!r} not after position {at} in:\n{text[-4000:]}"
        at = found + len(needle)


# --- items 16 and 20: con2 run -----------------------------------------------------------------------------

def test_con2_run_shows_the_notebooks_warnings_and_each_phase(store, tmp_path) -> None:
    make_experiment("seen", tmp_path)
    params = tmp_path / "folder.yaml"
    params.write_text(yaml.safe_dump(folder_params(tmp_path, "seen")))
    proc = subprocess.run(con2_command("run", str(params), "--quiet"), cwd=ROOT, env=store, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert_in_order(out, ("con2 run: checking the parameters and the tracking store",
                          "con2 run: starting the notebook's kernel", *PHASES,
                          "con2 run: logging the executed notebook", "con2 run: finished"))
    # the skipped files, every line of the warning, each file named
    assert re.search(r"^warning: SkippedImageWarning: data set 'folder': skipped 3 unreadable image file\(s\)",
                     out, re.M)
    for name in ("empty.jpg", "truncated.jpg", "text.jpg"):
        assert re.search(rf"^warning:   \S*{name}", out, re.M), name
    assert re.search(r"^warning: CalibrationWarning: threshold calibration skipped \(calibration_fraction is 0\)",
                     out, re.M)


def test_quiet_echo_passes_progress_phases_and_whole_warnings() -> None:
    target = io.StringIO()
    echo = StreamEcho(target, label="[p] ")
    forward_warnings(echo)
    try:
        warnings.warn("two\n  lines", UserWarning, stacklevel=1)
    finally:
        warnings.showwarning = warnings._showwarning_orig  # type: ignore[attr-defined]
    echo.write("noise\nphase: scoring\nepoch 1/2  loss 1\nmore noise\n")
    assert target.getvalue() == ("[p] warning: UserWarning: two\n[p] warning:   lines\n[p] phase: scoring\n"
                                 "[p] epoch 1/2  loss 1\n")


# --- items 16, 18, 20: a real sweep ------------------------------------------------------------------------

def test_a_sweep_forwards_warnings_reports_each_point_and_ends_with_a_table(fast_store, tmp_path) -> None:
    make_experiment("swept", tmp_path)
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(folder_params(tmp_path, "swept")))
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"base": str(base), "grid": {"lr": [0.001]}}))
    proc = subprocess.run(con2_command("sweep", str(grid)), cwd=ROOT, env=fast_store, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    label = "con2 sweep: point 1 (lr=0.001): "
    assert_in_order(out, tuple(label + p for p in PHASES))
    assert f"{label}warning: SkippedImageWarning: data set 'folder': skipped 3 unreadable" in out
    assert f"{label}warning: CalibrationWarning: threshold calibration skipped" in out
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("swept").experiment_id])
    [parent] = [r for r in runs if r.data.tags.get(TAG_ROLE) == "parent"]
    [child] = [r for r in runs if r.data.tags.get(TAG_ROLE) != "parent"]
    name = f"{run_name(Config.from_params(yaml.safe_load(base.read_text())))} lr=0.001"
    assert child.info.run_name == name  # as con2 run names it, plus the grid value the name does not show
    nnd, lh = (f"{100 * child.data.metrics[k]:.2f}" for k in ("auroc_nnd", "auroc_lh"))
    assert f"[1/1] point 1 (lr=0.001): FINISHED, run {child.info.run_id}, AUROC S_NND {nnd}, S_LH {lh}" in out
    assert re.search(r"^#  grid values\s+state\s+S_NND\s+S_LH\s+SSD\s+pixel 1-NN\s+run$", out, re.M), out[-2000:]
    assert re.search(rf"^1  lr=0\.001\s+done\s+{nnd}\s+{lh}\s+\d+\.\d+\s+\d+\.\d+\s+{re.escape(name)}$", out, re.M)
    assert re.search(rf"^\s+mean of 1 done\s+{nnd}\s+{lh}", out, re.M)
    results = Path(client.download_artifacts(parent.info.run_id, "sweep/results.csv", str(tmp_path))).read_text()
    assert f"1,lr=0.001,done,{name},{child.info.run_id}," in results
    assert f"| 1 | lr=0.001 | done | {nnd} | {lh} |" in parent.data.tags["mlflow.note.content"]


# --- items 12 and 18 without training ----------------------------------------------------------------------

class FinishEach:
    """A backend that 'runs' each point by creating a FINISHED run with AUROCs, as a worker would."""

    def __init__(self, client: MlflowClient, experiment_id: str) -> None:
        self.client, self.experiment_id = client, experiment_id

    def describe(self, points: list[Any]) -> str:
        return "backend finish-each"

    def run(self, tasks: list[dict[str, Any]], points: list[Any], on_done: Any) -> None:
        for task in tasks:
            run_id = self.client.create_run(self.experiment_id, run_name=task["params"]["run_name"],
                                            tags=task["tags"]).info.run_id
            self.client.log_metric(run_id, "auroc_nnd", 0.9 + task["index"] / 100)
            self.client.log_metric(run_id, "auroc_lh", 0.8)
            self.client.set_terminated(run_id, "FINISHED")
            on_done(task, "FINISHED")


def test_a_rerun_sweep_that_completes_drops_the_dead_attempts_failure_tag(fast_store, tmp_path, capsys) -> None:
    experiment_id = make_experiment("rerun", tmp_path)
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({**TINY, "experiment": "rerun"}))
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"base": str(base), "grid": {"seed": [0, 1], "temperature": [0.5]}}))
    sweep = load_sweep(grid)
    client = MlflowClient()
    dead = subprocess.Popen(["true"])
    dead.wait()
    parent = client.create_run(experiment_id, tags={TAG_SWEEP: sweep.sweep_id, TAG_ROLE: "parent",
                                                    tracking.TAG_PID: str(dead.pid),
                                                    tracking.TAG_HOST: socket.gethostname()})
    # the first attempt was killed outright: the next start marks its parent FAILED, "process ... died"
    assert run_sweep(sweep, FinishEach(client, experiment_id)) == 0
    run = client.get_run(parent.info.run_id)
    assert run.info.status == "FINISHED"
    assert tracking.TAG_FAILURE not in run.data.tags, run.data.tags[tracking.TAG_FAILURE]
    out = capsys.readouterr().out
    # each point's AUROCs as it ends; child runs named as con2 run names them
    assert re.search(r"\[1/2\] point 1 \(seed=0, temperature=0.5\): FINISHED, run \w+, AUROC S_NND 91.00, S_LH 80.00",
                     out)
    assert re.search(r"^\s+mean of 2 done\s+91.50\s+80.00\s+-\s+-$", out, re.M), out
    names = sorted(r.info.run_name for r in client.search_runs([experiment_id]) if "con2.point" in r.data.tags)
    assert names == ["digits-1-invert-s0 temperature=0.5", "digits-1-invert-s1 temperature=0.5"]
    assert point_name(sweep.points[0]) == names[0]


def test_a_run_name_parameter_of_a_point_wins(tmp_path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({**TINY, "run_name": "mine"}))
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"base": str(base), "grid": {"seed": [0]}}))
    assert point_name(load_sweep(grid).points[0]) == "mine"


# --- item 19: no run that takes days by accident -------------------------------------------------------------

def test_the_cpu_folder_example_is_the_cpu_preset_on_your_own_images() -> None:
    from con2lib.paramfiles import load_params

    preset, example = load_params(ROOT / "params/presets/cpu.yaml"), load_params(ROOT / "params/folder_cpu.yaml")
    cfg = Config.from_params(example)
    assert cfg.dataset == "folder" and cfg.device == "cpu"
    assert {k: example[k] for k in preset} == preset  # every CPU-preset choice kept: 28 px, 20 epochs, width 0.25
    paper = Config.from_params(load_params(ROOT / "params/folder/invert.yaml"))
    assert paper.epochs == 2048 and "params/folder_cpu.yaml" in (ROOT / "params/folder/invert.yaml").read_text()


@pytest.mark.parametrize(("first_epoch_s", "warned"), [(400.0, True), (10.0, False)])
def test_after_the_first_epoch_a_run_of_more_than_an_hour_says_so(fast_store, monkeypatch, first_epoch_s,
                                                                   warned) -> None:
    import mlflow

    from con2lib.method.epochs import EpochStats

    cfg = Config.from_params({**TINY, "epochs": 10})
    clock = iter([1000.0, 1000.0 + first_epoch_s])
    monkeypatch.setattr(tracking.time, "perf_counter", lambda: next(clock))
    with mlflow.start_run() as run, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logger = tracking.EpochLogger(cfg, run.info.run_id)
        logger(EpochStats(1, 1.0, 1.0, 1.0, 0.0, 1e-3, 100.0), None)
    texts = [str(w.message) for w in caught if w.category is LongRunWarning]
    if warned:  # 9 epochs left at 6m40s: 1h00m more
        assert texts == ["training will take about 1h00m more (9 epochs left at 6m40s each); Ctrl-C stops it and "
                         "the same command continues it from its last checkpoint. On a CPU, params/presets/cpu.yaml "
                         "(your own images: params/folder_cpu.yaml) trains in minutes"]
    else:
        assert texts == []


# --- item 17: the MLflow UI opens con2's experiments on their runs, with the AUROCs ----------------------------

def test_con2_experiments_open_in_the_ui_on_runs_with_the_auroc_columns(fast_store, monkeypatch, capsys) -> None:
    import json

    from con2lib import cli
    from con2lib.runs.mlflow_ui import ui_url
    from con2lib.runs.store import KIND_TAG, VIEW_TAG

    experiment_id = tracking.setup("shown")
    tags = MlflowClient().get_experiment(experiment_id).tags
    assert tags[KIND_TAG] == "custom_model_development"  # model training, not a GenAI app
    view = json.loads(tags[VIEW_TAG])  # what ?viewStateShareKey=con2 applies to the runs table
    assert view["selectedColumns"][:3] == ["metrics.`auroc_nnd`", "metrics.`auroc_lh`", "metrics.`auroc_pixel_knn`"]
    commands: list[list[str]] = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd: commands.append(cmd) or 0)
    assert cli.main(["ui", "--port", "5099"]) == 0
    url = ui_url("http://127.0.0.1:5099", experiment_id)
    assert url == (f"http://127.0.0.1:5099/#/experiments/{experiment_id}/runs?viewStateShareKey=con2"
                   "&workflowType=machine_learning")
    assert f"  shown: {url}" in capsys.readouterr().out.splitlines()
    assert commands[0][commands[0].index("--port") + 1] == "5099"


# --- item 21: compare's tables never mark a baseline as the best cell -----------------------------------------

def test_the_best_cell_of_a_row_is_a_con2_score_not_a_baseline() -> None:
    import pandas as pd

    from con2lib.analysis import compare

    columns = pd.MultiIndex.from_product([compare.STATS, ["invert"], ["auroc_nnd", "auroc_lh", "auroc_ssd"]])
    table = pd.DataFrame([[90.0, 92.0, 95.0, 1.0, 1.0, 1.0, 2, 2, 2, 2, 2, 2]], index=["digits"], columns=columns)
    assert list(compare.format_pivot(table).iloc[0]) == ["90.0 ± 1.0 (2)", "92.0 ± 1.0 (2)*", "95.0 ± 1.0 (2)"]
    html = compare.style_pivot(table).to_html()
    assert set(re.findall(r"row(\d+)_col(\d+)", html.split("</style>")[0])) == {("0", "1")}  # S_LH bold, not SSD
    only_ssd = table.loc[:, [c for c in columns if c[2] == "auroc_ssd"]]
    assert list(compare.format_pivot(only_ssd).iloc[0]) == ["95.0 ± 1.0 (2)*"]


def test_the_pca_view_names_its_axes_with_their_explained_variance() -> None:
    import numpy as np
    import pandas as pd
    import torch

    from con2lib.analysis import report_plots

    features = torch.randn(40, 8) * torch.tensor([5.0, 2.0, 1, 1, 1, 1, 1, 1])
    coords, axes = report_plots.embed_2d(features, "pca")
    assert coords.shape == (40, 2)
    assert re.fullmatch(r"PC1 \(\d+\.\d% of variance\)", axes[0]) and axes[1].startswith("PC2 (")
    fig = report_plots.embedding_figure(coords, np.array(["train"] * 40), pd.DataFrame({"index": range(40)}), "t", axes)
    assert (fig.layout.xaxis.title.text, fig.layout.yaxis.title.text) == axes
