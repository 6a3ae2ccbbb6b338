"""Sweeps: grid expansion and validation, sweep ids, which points run again, concurrent logging, real sweeps.

Most tests run no training: they create the sweep's runs with the MLflow client and check which
points would run. One test runs a real two-worker sweep on a tiny config, kills it with SIGKILL after
the first point finished, and completes it by running again on the Slurm backend (submitit's local
executor).
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from con2lib import cli
from con2lib.runs import tracking
from con2lib.sweeps.backends import LocalBackend, child_tags, run_sweep
from con2lib.sweeps.grid import (
    TAG_POINT,
    TAG_POINT_PARAMS,
    TAG_ROLE,
    TAG_SWEEP,
    GridError,
    load_sweep,
    point_key,
    point_states,
    sweep_runs,
)

from conftest import ROOT, TINY, assert_writer_runs, con2_command, make_experiment, notebook_with_cell


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tiny_grid(tmp_path: Path, grid: dict[str, list], experiment: str = "sweep", **spec: Any) -> Path:
    base = write(tmp_path / "tiny.yaml", {**TINY, "experiment": experiment})
    return write(tmp_path / "grid.yaml", {"base": str(base), **spec, "grid": grid})


def runs_of(experiment: str) -> list[Any]:
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


# --- grid files ---------------------------------------------------------------------------------------

def test_points_are_base_then_params_file_then_overrides_then_grid_values(tmp_path) -> None:
    write(tmp_path / "a.yaml", {"dataset": "digits", "context": "flip", "batch_size": 32, "epochs": 7})
    write(tmp_path / "b.yaml", {"extends": "a.yaml", "context": "equalize"})
    grid = write(tmp_path / "grid.yaml", {
        "base": "quickstart.yaml",  # relative to params/
        "overrides": {"batch_size": 8, "seed": 5},
        "grid": {"params": ["a.yaml", "b.yaml"], "seed": [0, 1], "normal_class": [3]},  # next to the grid file
    })
    sweep = load_sweep(grid)
    assert [p.label for p in sweep.points] == [
        "params=a.yaml, seed=0, normal_class=3", "params=a.yaml, seed=1, normal_class=3",
        "params=b.yaml, seed=0, normal_class=3", "params=b.yaml, seed=1, normal_class=3"]
    first = sweep.points[0].params
    assert first["context"] == "flip" and first["epochs"] == 7  # the params file over the base
    assert first["batch_size"] == 8  # the overrides over the params file
    assert first["seed"] == 0 and first["normal_class"] == 3  # the grid values over everything
    assert first["image_size"] == 16 and first["experiment"] == "quickstart"  # from params/quickstart.yaml
    assert sweep.points[2].params["context"] == "equalize"
    assert len({p.key for p in sweep.points}) == 4 and sweep.experiments() == ["quickstart"]
    rows = sweep.csv().splitlines()
    assert rows[0].startswith("index,point,grid.params,grid.seed,grid.normal_class,") and len(rows) == 5


@pytest.mark.parametrize("spec,message", [
    ({"grid": {"epochs": [5, 0], "seed": [0, 1]}},
     r"point 3 of 4 \(epochs=0, seed=0\): parameter epochs=0 is invalid: expected an integer > 0"),
    ({"grid": {"context": ["invert", "rotate"]}}, r"point 2 of 2 \(context=rotate\): parameter context='rotate'"),
    ({"grid": {"seed": [0]}, "overrides": {"epoch": 3}}, r"point 1 of 1 \(seed=0\): unknown parameter\(s\) 'epoch'"),
    ({"grid": {"params": ["missing.yaml"]}}, r"params file 'missing.yaml' not found"),
    ({"grid": {"seed": 3}}, r"grid key 'seed' must be a non-empty list of values"),
    ({"grid": {"seed": [0]}, "sweep": 1}, r"unknown key\(s\) 'sweep'"),
])
def test_a_bad_point_stops_the_sweep_naming_it(fast_store, tmp_path, capsys, spec, message) -> None:
    grid = write(tmp_path / "grid.yaml", {"base": str(write(tmp_path / "tiny.yaml", TINY)), **spec})
    with pytest.raises(GridError, match=message):
        load_sweep(grid)
    assert cli.main(["sweep", str(grid)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("con2 sweep: "), err
    client = MlflowClient()
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_sweep_id_depends_on_the_points_only(tmp_path) -> None:
    one = tiny_grid(tmp_path, {"seed": [0, 1], "context": ["invert", "flip"]})
    first = load_sweep(one)
    same = tmp_path / "same"
    same.mkdir()
    (same / "grid.yaml").write_text(  # other formatting, other key order, other folder: the same points
        f"grid:\n  context: [invert, flip]\n  seed:\n    - 0\n    - 1\nbase: {tmp_path / 'tiny.yaml'}\n")
    assert load_sweep(same / "grid.yaml").sweep_id == first.sweep_id
    assert load_sweep(one).sweep_id == first.sweep_id
    assert point_key({"seed": 1, "epochs": 2}) == point_key({"epochs": 2, "seed": 1})
    other = tiny_grid(tmp_path, {"seed": [0, 2], "context": ["invert", "flip"]})  # one value changed
    assert load_sweep(other).sweep_id != first.sweep_id


def test_points_are_keyed_by_what_trains_not_by_how_the_files_spell_it(tmp_path) -> None:
    from con2lib.config import Config

    plain = load_sweep(tiny_grid(tmp_path, {"seed": [0, 1]}))
    default_lr = Config().lr
    spelled = tmp_path / "spelled"
    spelled.mkdir()
    redundant = load_sweep(tiny_grid(spelled, {"seed": [0, 1], "lr": [default_lr]}))  # a default, written out
    assert [p.key for p in redundant.points] == [p.key for p in plain.points]
    assert redundant.sweep_id == plain.sweep_id
    changed = load_sweep(tiny_grid(spelled, {"seed": [0, 1], "lr": [default_lr / 2]}))  # another config
    assert not {p.key for p in changed.points} & {p.key for p in plain.points}


# --- which points run ---------------------------------------------------------------------------------

def test_finished_points_are_skipped_failed_killed_and_missing_ones_run(fast_store, tmp_path, capsys) -> None:
    make_experiment("sweep", tmp_path)
    sweep = load_sweep(tiny_grid(tmp_path, {"seed": [0, 1, 2, 3, 4, 5]}))
    client, host = MlflowClient(), socket.gethostname()
    experiment_id = client.get_experiment_by_name("sweep").experiment_id
    dead = subprocess.Popen(["true"])
    dead.wait()

    def fake(point: Any, status: str, pid: int = dead.pid) -> str:
        tags = {**child_tags(sweep, point, "earlier-parent"), tracking.TAG_PID: str(pid), tracking.TAG_HOST: host}
        run_id = client.create_run(experiment_id, tags=tags).info.run_id
        if status != "RUNNING":
            client.set_terminated(run_id, status)
        return run_id

    p = sweep.points
    fake(p[0], "FAILED")
    done = fake(p[0], "FINISHED")  # failed once, then finished: done
    fake(p[1], "FAILED")
    fake(p[2], "KILLED")
    stale = fake(p[3], "RUNNING")  # its process is gone
    fake(p[4], "RUNNING", pid=os.getpid())  # alive: left alone
    states = point_states(sweep, sweep_runs(client, sweep, [experiment_id]))
    assert [states[q.key][0] for q in p] == ["done", "failed", "failed", "failed", "running", "pending"]
    assert states[p[0].key][1].info.run_id == done

    class Recorder:
        tasks: list[dict[str, Any]] = []

        def describe(self, points: list[Any]) -> str:
            return "backend recorder"

        def run(self, tasks: list[dict[str, Any]], points: list[Any], on_done: Any) -> None:
            self.tasks.extend(tasks)
            for task in tasks:
                on_done(task, "not run (test)")

    assert run_sweep(sweep, Recorder()) == 1  # points still not done
    assert [t["index"] for t in Recorder.tasks] == [2, 3, 4, 6]
    assert client.get_run(stale).info.status == "FAILED"  # marked by the sweep's start
    [parent] = [r for r in runs_of("sweep") if r.data.tags.get(TAG_ROLE) == "parent"]
    assert parent.info.status == "FAILED" and parent.data.params["grid_file"].endswith("grid.yaml")
    assert parent.data.metrics == {"points_done": 1, "points_running": 1, "points_failed": 3, "points_pending": 1}
    task = Recorder.tasks[0]
    assert task["tags"]["mlflow.parentRunId"] == parent.info.run_id and task["tags"][TAG_SWEEP] == sweep.sweep_id
    assert task["tags"][TAG_POINT] == p[1].key and '"seed":1' in task["tags"][TAG_POINT_PARAMS]
    csv = Path(client.download_artifacts(parent.info.run_id, "sweep/grid.csv", str(tmp_path))).read_text()
    assert len(csv.splitlines()) == 7 and p[5].key in csv
    out = capsys.readouterr().out
    assert "6 points: 1 done, 1 running, 3 failed, 1 pending" in out
    assert "[4/4] point 6 (seed=5): not run (test)" in out
    Recorder.tasks.clear()
    assert run_sweep(sweep, Recorder()) == 1  # again: the same parent run, the same points to run
    assert len([r for r in runs_of("sweep") if r.data.tags.get(TAG_ROLE) == "parent"]) == 1
    assert [t["index"] for t in Recorder.tasks] == [2, 3, 4, 6]
    assert cli.main(["sweep", str(sweep.path), "--status"]) == 0
    out = capsys.readouterr().out
    assert f"done     #1    {p[0].key}  seed=0  run {done} FINISHED" in out
    assert "6 points: 1 done, 1 running, 3 failed, 1 pending" in out


def test_dry_run_lists_points_and_creates_nothing(store, tmp_path, capsys) -> None:
    grid = tiny_grid(tmp_path, {"context": ["invert", "flip"], "seed": [0, 1]})
    assert cli.main(["sweep", str(grid), "--dry-run", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "4 points, all valid" in out and "backend local: 2 CPU worker(s), OMP_NUM_THREADS=" in out
    assert "  run      #3    " in out and "context=flip, seed=0" in out
    assert "dry run: 4 point(s) would run; nothing was started" in out
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()
    assert cli.main(["sweep", str(grid), "--dry-run", "--backend", "slurm", "--partition", "gpu",
                     "--gpus-per-job", "1", "--array-parallelism", "8"]) == 0
    assert "a job array of 4 task(s), partition gpu, 1440 min, 1 GPU(s) per task, at most 8 at once" in \
        capsys.readouterr().out


def test_local_workers_get_a_gpu_each_or_a_share_of_the_cores(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("con2lib.sweeps.backends.cpu_count", lambda: 16)
    points = load_sweep(tiny_grid(tmp_path, {"seed": [0, 1]}, overrides={"device": "auto"})).points
    gpu = LocalBackend(tmp_path, gpus=["0", "1", "2", "3"]).slots(list(points))
    assert [s["CUDA_VISIBLE_DEVICES"] for s in gpu] == ["0", "1", "2", "3"] and gpu[0]["OMP_NUM_THREADS"] == "4"
    assert len(LocalBackend(tmp_path, workers=2, gpus=["0", "1", "2", "3"]).slots(list(points))) == 2
    cpu = LocalBackend(tmp_path, workers=3, gpus=[]).slots(list(points))
    assert len(cpu) == 3 and cpu[0]["OMP_NUM_THREADS"] == "5" and "CUDA_VISIBLE_DEVICES" not in cpu[0]
    cuda = load_sweep(tiny_grid(tmp_path, {"seed": [0]}, overrides={"device": "cuda"})).points
    with pytest.raises(ValueError, match="device=cuda but this machine has no GPU"):
        LocalBackend(tmp_path, gpus=[]).slots(list(cuda))


# --- many writers, one SQLite store -------------------------------------------------------------------

N_RUNS, N_STEPS, N_METRICS, N_PARAMS = 8, 50, 6, 30


def _log_one_run(uri: str, experiment_id: str, index: int, start: Any) -> None:
    """A worker process: opens the store, waits for the others, then logs a run as the notebook would."""
    mlflow.set_tracking_uri(uri)
    MlflowClient().get_experiment(experiment_id)
    start.wait(180)  # all eight write at the same time
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"writer-{index}"):
        mlflow.log_params({f"p{k}": f"{index}-{k}" for k in range(N_PARAMS)})
        for step in range(N_STEPS):
            mlflow.log_metrics({f"m{k}": index * 1000 + step * 10 + k for k in range(N_METRICS)}, step=step)


def test_eight_concurrent_runs_on_one_sqlite_store_lose_nothing(fast_store, tmp_path, monkeypatch) -> None:
    # an earlier in-process IPython test may leave a __main__ without __spec__, which forkserver reads
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", None, raising=False)
    make_experiment("concurrent", tmp_path)
    experiment_id = tracking.setup("concurrent")  # what run_sweep does before its workers start
    context = multiprocessing.get_context("forkserver")  # separate processes, imports done once
    context.set_forkserver_preload(["mlflow", "mlflow.tracking", "mlflow.store.tracking.sqlalchemy_store",
                                    "alembic.command", "test_sweep"])
    start = context.Barrier(N_RUNS + 1)
    workers = [context.Process(target=_log_one_run, args=(tracking.tracking_uri(), experiment_id, i, start))
               for i in range(N_RUNS)]
    for worker in workers:
        worker.start()
    start.wait(180)
    for worker in workers:
        worker.join(240)
    assert [w.exitcode for w in workers] == [0] * N_RUNS
    client = MlflowClient()
    runs = client.search_runs([experiment_id])
    assert_writer_runs(client, runs, N_RUNS, N_PARAMS, N_METRICS, N_STEPS)


# --- real sweeps --------------------------------------------------------------------------------------

STALL = """
import os, time
if os.environ.get("CON2_TEST_STALL") == str(seed):  # this point hangs until it is killed
    time.sleep(600)
"""


def test_killed_local_sweep_completes_when_run_again_on_the_slurm_backend(fast_store, tmp_path) -> None:
    make_experiment("sweep", tmp_path)
    grid = tiny_grid(tmp_path, {"seed": [0, 1]})
    sweep = load_sweep(grid)
    notebook = notebook_with_cell(tmp_path, STALL, after="Config.from_namespace(globals())")
    command = con2_command("sweep", str(grid), "--notebook", str(notebook))
    first = subprocess.Popen([*command, "--workers", "2"], cwd=ROOT, env={**fast_store, "CON2_TEST_STALL": "1"},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finished: list[Any] = []
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.5)
            finished = [r for r in runs_of("sweep") if r.info.status == "FINISHED" and TAG_POINT in r.data.tags]
            if finished:
                break
    finally:
        first.send_signal(signal.SIGKILL)  # no chance to clean up; its workers get SIGTERM from Linux
        output = first.communicate()[0]
    assert finished, output[-3000:]
    assert re.search(r"^con2 sweep: point \d \(seed=0\): epoch 2/2  loss .* img/s .*ETA", output, re.M), output[-3000:]
    [done] = finished
    assert done.data.tags[TAG_POINT] == sweep.points[0].key
    deadline = time.monotonic() + 120
    while any(r.info.status == "RUNNING" for r in runs_of("sweep") if TAG_POINT in r.data.tags):
        assert time.monotonic() < deadline, "the killed sweep's worker left its run RUNNING"
        time.sleep(0.5)
    killed = [r for r in runs_of("sweep") if r.data.tags.get(TAG_POINT) == sweep.points[1].key]
    assert [r.info.status for r in killed] in ([], ["KILLED"])  # none if killed before its run began

    again = subprocess.run([*command, "--backend", "slurm", "--cluster", "local", "--gpus-per-job", "0",
                            "--time-min", "30"], cwd=ROOT, env=fast_store, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert re.search(r"2 points: 1 done, 0 running, [01] failed, [01] pending", again.stdout)
    assert "2 points: 2 done, 0 running, 0 failed, 0 pending" in again.stdout
    children = [r for r in runs_of("sweep") if TAG_POINT in r.data.tags]
    first_point = [r for r in children if r.data.tags[TAG_POINT] == sweep.points[0].key]
    assert [r.info.run_id for r in first_point] == [done.info.run_id]  # not run again
    second = sorted(r.info.status for r in children if r.data.tags[TAG_POINT] == sweep.points[1].key)
    assert second == sorted(["FINISHED", *(r.info.status for r in killed)])
    [parent] = [r for r in runs_of("sweep") if r.data.tags.get(TAG_ROLE) == "parent"]
    assert parent.info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert all(r.data.tags[TAG_SWEEP] == sweep.sweep_id for r in children)
    rerun = [r for r in children if r.info.status == "FINISHED" and r.info.run_id != done.info.run_id]
    assert 0 <= rerun[0].data.metrics["auroc_nnd"] <= 1
