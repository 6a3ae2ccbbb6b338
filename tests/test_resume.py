"""Resume: a run interrupted at any moment continues from its last training checkpoint and ends exactly
as an uninterrupted run (same weights, losses and RNG states on CPU; through ``con2 run``: the same MLflow
run, FINISHED, with the same AUROCs)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from con2lib.config import Config
from con2lib.data import load_dataset
from con2lib.method.checkpoint import load_checkpoint, save_checkpoint
from con2lib.method.device import seed_everything
from con2lib.method.models import build_model
from con2lib.method.train import fit
from con2lib.runs import tracking

from conftest import ROOT, TINY, con2_command, make_experiment, notebook_with_cell

PARAMS = {**TINY, "epochs": 5, "checkpoint_every": 2}


class Interrupted(Exception):
    """Raised by on_epoch to stop training as a kill would."""


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return load_dataset(Config.from_params(PARAMS)).train


def train(cfg: Config, images: torch.Tensor, init_seed: int, **kwargs: Any) -> tuple[torch.nn.Module, list]:
    seed_everything(init_seed)
    model = build_model(cfg, images.shape[1])
    return model, fit(cfg, model, images, progress=False, **kwargs)


def test_interrupted_fit_resumes_to_the_same_weights_losses_and_rng(images, tmp_path) -> None:
    cfg = Config.from_params(PARAMS)
    reference, expected = train(cfg, images, cfg.seed)
    rng_after = torch.get_rng_state()

    def stop_at_epoch_4(stats: Any, model: Any) -> None:
        if stats.epoch == 4:
            raise Interrupted

    path = tmp_path / "checkpoint.pt"
    with pytest.raises(Interrupted):
        train(cfg, images, cfg.seed, on_epoch=stop_at_epoch_4, checkpoint=path)
    state = load_checkpoint(path)  # weights_only=True inside
    assert state["epoch"] == 2 and state["training"]["step"] == 4  # checkpoint_every=2; epoch 4 was never saved

    seen = []
    # another initialisation and global RNG state: everything must come from the checkpoint
    model, history = train(cfg, images, 1234, checkpoint=path, on_epoch=lambda stats, _: seen.append(stats.epoch))
    assert seen == [3, 4, 5]
    assert [h.epoch for h in history] == [1, 2, 3, 4, 5]
    for got, want in zip(history, expected):
        assert (got.loss, got.loss_context, got.loss_content, got.alpha, got.lr) == \
               (want.loss, want.loss_context, want.loss_content, want.alpha, want.lr)
    for (name, got), want in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(got, want), name
    assert torch.equal(torch.get_rng_state(), rng_after)
    assert load_checkpoint(path)["epoch"] == 5


def test_finished_checkpoint_trains_nothing_and_other_params_are_refused(images, tmp_path) -> None:
    cfg = Config.from_params({**PARAMS, "epochs": 2})
    path = tmp_path / "checkpoint.pt"
    trained, expected = train(cfg, images, cfg.seed, checkpoint=path)
    model, history = train(cfg, images, 99, checkpoint=path, on_epoch=lambda *_: pytest.fail("trained again"))
    assert [h.loss for h in history] == [h.loss for h in expected]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.state_dict().values()))
    with pytest.raises(ValueError, match=r"written by a run with other parameters: lr=0.001 \(now 0.01\)"):
        train(cfg.replace(lr=0.01), images, 0, checkpoint=path)
    # a checkpoint whose weights hold a NaN (loads with weights_only) is refused, not trained on
    state = load_checkpoint(path)
    next(iter(state["model"].values())).view(-1)[0] = float("nan")
    save_checkpoint(path, state)
    with pytest.raises(ValueError, match=r"checkpoint \S+checkpoint\.pt model\['\S+'\] holds 1 NaN or infinite "
                                         r"value\(s\) of \d+: a damaged or tampered file, refused"):
        train(cfg, images, 0, checkpoint=path)


# --- through con2 run: SIGKILL, then the same command again --------------------------------------------

SLOW_EPOCHS = """
import time as _time
import con2lib.runs.tracking as _tracking
_log = _tracking.EpochLogger.__call__
def _slow_log(self, stats, model):  # time for the test to kill the run between two checkpoints
    _time.sleep(0.4)
    _log(self, stats, model)
_tracking.EpochLogger.__call__ = _slow_log
"""


def kernel_of(pid: int) -> int | None:
    """The pid of the notebook kernel started by ``con2 run`` ``pid`` (its child, in a session of its own)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent == pid and b"ipykernel" in (stat.parent / "cmdline").read_bytes():
                return int(stat.parent.name)
        except (OSError, IndexError, ValueError):  # the process ended meanwhile
            continue
    return None


def test_sigkilled_con2_run_continues_in_the_same_mlflow_run(fast_store, tmp_path) -> None:
    make_experiment("resume", tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**TINY, "experiment": "resume", "epochs": 6, "checkpoint_every": 2}))
    notebook = notebook_with_cell(tmp_path, SLOW_EPOCHS, after="Config.from_namespace(globals())")
    command = con2_command("run", str(params), "--notebook", str(notebook), "--quiet")
    env = {**fast_store, "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    # the uninterrupted reference runs alongside the run that is killed
    reference = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
    killed = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    checkpoints, kernel = [], None
    try:
        deadline = time.monotonic() + 300
        while not checkpoints and time.monotonic() < deadline and killed.poll() is None:
            time.sleep(0.05)
            kernel = kernel or kernel_of(killed.pid)
            if kernel is not None:  # the killed run's own folder: runs/<its run id>/checkpoint.pt
                checkpoints = [p for p in Path(fast_store["CON2_RUNS_DIR"]).glob("*/checkpoint.pt")
                               if _started_by(p.parent.name, killed.pid, kernel)]
        assert checkpoints and kernel is not None, "the run never wrote a checkpoint"
        os.kill(kernel, signal.SIGKILL)
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
    run_id = checkpoints[0].parent.name
    epoch = load_checkpoint(checkpoints[0])["epoch"]
    assert epoch < 6, "killed too late: training had finished"
    # the same command again, while the reference is still running
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"continuing MLflow run {run_id}" in again.stdout + again.stderr
    out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, out[-3000:]
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    assert len(runs) == 2 and run_id in {r.info.run_id for r in runs}  # the resumed run and the reference
    resumed, uninterrupted = sorted(runs, key=lambda r: r.info.run_id != run_id)
    assert resumed.info.status == uninterrupted.info.status == "FINISHED"
    assert tracking.TAG_FAILURE not in resumed.data.tags
    for name in ("auroc_nnd", "auroc_lh", "auroc_nnd_notta", "auroc_lh_notta"):
        assert resumed.data.metrics[name] == uninterrupted.data.metrics[name], name
    for name in ("loss", "loss_context", "loss_content", "lr"):
        history = client.get_metric_history(run_id, name)  # each epoch logged once, as in the reference
        assert sorted(m.step for m in history) == list(range(1, 7)), name
        reference_values = {m.step: m.value for m in client.get_metric_history(uninterrupted.info.run_id, name)}
        assert {m.step: m.value for m in history} == reference_values, name
    print(f"killed at epoch {epoch}; whole test {time.monotonic() - start:.0f} s")


def _started_by(run_id: str, *pids: int) -> bool:
    """Whether the MLflow run's process tag names one of ``pids`` (the killed command or its kernel)."""
    try:
        return MlflowClient().get_run(run_id).data.tags.get(tracking.TAG_PID) in {str(p) for p in pids}
    except Exception:  # noqa: BLE001 - not yet readable
        return False
