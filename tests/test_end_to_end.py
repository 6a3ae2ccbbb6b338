"""The whole path a user takes: `con2 run` on a tiny config, papermill, MLflow, artifacts, checkpoint."""

from __future__ import annotations

import re
import subprocess

import nbformat
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

import con2lib
from con2lib.config import Config
from con2lib.data import load_dataset
from con2lib.method.checkpoint import load_checkpoint
from con2lib.method.device import seed_everything
from con2lib.method.evaluate import evaluate
from con2lib.method.models import build_model
from con2lib.method.train import fit

from conftest import ROOT, TINY, con2_command, make_experiment


def artifact_paths(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def test_con2_run_logs_a_finished_run_with_metrics_and_artifacts(store, tmp_path) -> None:
    make_experiment("e2e", tmp_path)
    params = tmp_path / "tiny.yaml"
    params.write_text(yaml.safe_dump({**TINY, "experiment": "e2e", "context": "auto"}))
    proc = subprocess.run(con2_command("run", str(params), "-p", "seed", "1", "--quiet"), cwd=ROOT, env=store,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # progress reaches the terminal while training, even --quiet; valid parameters draw no papermill warning
    for epoch in (1, 2):
        assert re.search(rf"^epoch {epoch}/2  loss \d+\.\d+ \(context .*\d+ img/s .*ETA \d+", proc.stdout, re.M)
    assert "Passed unknown parameter" not in proc.stderr, proc.stderr[-3000:]
    client = MlflowClient()
    [run] = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    assert run.info.status == "FINISHED"
    notebook = nbformat.read(tmp_path / "runs" / run.info.run_id / "train.ipynb", as_version=4)
    [training] = [c for c in notebook.cells if "history = fit(" in c.source]
    bars = "".join(o.get("text", "") for o in training.outputs if o.get("name") == "stderr")
    assert "training: 100%" in bars and "\r" not in bars  # a finished text bar, its redraws collapsed
    metrics = run.data.metrics
    assert 0 <= metrics["auroc_nnd"] <= 1 and 0 <= metrics["auroc_lh"] <= 1
    for name in ("auroc_nnd_notta", "auroc_lh_notta", "auroc_ssd"):
        assert 0 <= metrics[name] <= 1, name
    assert -1 <= metrics["silhouette_context"] <= 1
    for name in ("loss", "loss_context", "loss_content", "alpha", "lr", "images_per_s"):
        assert len(client.get_metric_history(run.info.run_id, name)) == TINY["epochs"], name
    assert run.data.params["seed"] == "1" and run.data.params["context"] == "auto"
    assert run.data.params["context_resolved"] in ("invert", "flip", "equalize", "rot90", "rot180", "hflip", "permute")
    assert run.data.params["data.normal_classes"] == "1"
    # runs one can tell apart: name from the config, code version, data sets, a description
    assert run.info.run_name == "digits-1-auto-s1"
    tags = run.data.tags
    assert tags["con2.version"] == con2lib.__version__
    if (ROOT / ".git").exists():  # a git checkout (not an unpacked archive)
        assert re.fullmatch(r"[0-9a-f]{40}", tags["con2.git_commit"]) and tags["con2.git_dirty"] in ("true", "false")
        assert tags["mlflow.source.git.commit"] == tags["con2.git_commit"]
    note = tags["mlflow.note.content"]
    assert f"S_NND **{100 * metrics['auroc_nnd']:.2f}**" in note and "`loss_context`" in note
    datasets = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset
                for d in run.inputs.dataset_inputs}
    assert set(datasets) == {"training", "test"} and datasets["training"].name == "digits-1-training"
    assert "sklearn.datasets.load_digits" in datasets["training"].source and datasets["test"].digest
    assert artifact_paths(client, run.info.run_id) >= {
        "notebook/train.html", "checkpoint/checkpoint.pt", "notebook/train.ipynb", "figures/representation_space.html",
        "figures/roc.html", "contexts/ranking.csv"}
    local = client.download_artifacts(run.info.run_id, "checkpoint/checkpoint.pt", str(tmp_path))
    state = load_checkpoint(local)  # weights_only=True inside
    cfg = Config.from_params(state["config"])
    model = build_model(cfg, in_channels=1)
    model.load_state_dict(state["model"])
    assert "mean" in state["scorer"]


def test_same_seed_same_auroc_on_cpu() -> None:
    cfg = Config.from_params({**TINY, "seed": 3})
    results = []
    for _ in range(2):
        seed_everything(cfg.seed)
        data = load_dataset(cfg)
        model = build_model(cfg, data.train.shape[1])
        fit(cfg, model, data.train, progress=False)
        result = evaluate(cfg, model.encoder, data, torch.device("cpu"))
        results.append((result.auroc_nnd, result.auroc_lh))
    assert results[0] == results[1]


@pytest.mark.parametrize("loss", ["con2", "context_only", "content_only", "simclr"])
def test_every_loss_variant_trains_one_epoch(loss: str) -> None:
    cfg = Config.from_params({**TINY, "loss": loss, "epochs": 1})
    seed_everything(0)
    data = load_dataset(cfg)
    model = build_model(cfg, data.train.shape[1])
    before = [p.detach().clone() for p in model.encoder.parameters()]
    [stats] = fit(cfg, model, data.train, progress=False)
    assert torch.isfinite(torch.tensor(stats.loss))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.encoder.parameters()))
    if loss == "simclr":
        assert stats.loss_context == 0.0
