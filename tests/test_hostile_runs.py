"""Hostile starts and stores (issue 16): the same run resumed twice at once, a new store created by three
processes at once, an unwritable artifact location, an experiment MLflow refuses, an unreachable server,
a full disk, an unwritable ``--out``, a figure that fails after training.

The concurrency tests start real processes; the notebook they execute only sleeps, so they stay fast.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import nbformat
import pytest
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from con2lib import cli
from con2lib.config import Config
from con2lib.method.checkpoint import config_key, save_checkpoint
from con2lib.runs import run_files, tracking
from con2lib.runs.resume import TAG_RESUME_KEY, reopen

from conftest import ROOT, TINY, artifact_paths, con2_command, make_experiment


def _params(tmp_path: Path, **params: Any) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({**TINY, **params}))
    return path


def _runs(experiment: str) -> list:
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


# --- 2: one interrupted run, two starts at once --------------------------------------------------------------

def _sleepy_notebook(tmp_path: Path, seconds: float) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("run_id = ''"), nbformat.v4.new_code_cell(f"import time\ntime.sleep({seconds})")]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "sleepy.ipynb"
    nbformat.write(nb, path)
    return path


def test_the_same_interrupted_run_started_twice_is_continued_once(fast_store, tmp_path) -> None:
    experiment_id = make_experiment("twice", tmp_path)
    params = _params(tmp_path, experiment="twice")
    key = config_key(Config.from_params(yaml.safe_load(params.read_text())).to_dict())
    client = MlflowClient()
    run_id = client.create_run(experiment_id, tags={TAG_RESUME_KEY: key}).info.run_id
    client.set_terminated(run_id, "KILLED")
    save_checkpoint(tracking.run_dir(run_id) / "checkpoint.pt", {"epoch": 1, "training": {}})
    command = con2_command("run", str(params), "--quiet", "--notebook", str(_sleepy_notebook(tmp_path, 8)))
    procs = [subprocess.Popen(command, cwd=ROOT, env=fast_store, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outcomes = {proc.pid: (proc.wait(timeout=300), proc.stderr.read()) for proc in procs}
    codes = sorted(code for code, _ in outcomes.values())
    assert codes == [0, 2], outcomes
    [(winner, _)] = [(pid, err) for pid, (code, err) in outcomes.items() if code == 0]
    [refused] = [err for code, err in outcomes.values() if code == 2]
    assert re.fullmatch(rf"con2 run: MLflow run {run_id} is being continued by process {winner} on \S+ \(the same "
                        r"command started twice\); wait for it to end, or stop it", refused.strip().splitlines()[-1]), refused
    [run] = _runs("twice")  # no second run either
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert json.loads((tracking.run_dir(run_id) / "train.ipynb").read_text())["cells"]  # written whole


def test_a_claim_is_given_up_with_its_process(tmp_path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from con2lib.runs.run_files import Claim; Claim(Path(sys.argv[1])); print('held', "
                               "flush=True); time.sleep(60)", str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(run_files.RunBusy, match=rf"process {holder.pid} on "):
            run_files.Claim(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    run_files.Claim(tmp_path).release()  # the OS released the dead holder's lock


# --- 3: a new store, three processes at once ---------------------------------------------------------------

def test_three_processes_create_a_new_store_together(store, tmp_path) -> None:
    assert not (tmp_path / "mlflow.db").exists()
    code = "from con2lib.runs import tracking; print(tracking.setup('together'))"
    env = {**store, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(proc.wait(timeout=300), proc.stdout.read().strip(), proc.stderr.read()) for proc in procs]
    assert [code for code, _, _ in results] == [0, 0, 0], [err[-2000:] for _, _, err in results]
    assert len({out for _, out, _ in results}) == 1


# --- 4, 9, 12: checked at start, one line, no run ------------------------------------------------------------

def test_an_unwritable_experiment_artifact_location_is_reported_at_start(fast_store, tmp_path, capsys) -> None:
    (tmp_path / "file.txt").write_text("a file, not a folder")
    MlflowClient().create_experiment("ro", artifact_location=(tmp_path / "file.txt" / "ro").as_uri())
    assert cli.main(["run", str(_params(tmp_path, experiment="ro"))]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"con2 run: the artifact location of experiment 'ro' \S+/file.txt/ro is not writable \(Not a "
                        r"directory\); free disk space, fix permissions, or set MLFLOW_TRACKING_URI / CON2_RUNS_DIR",
                        err), err
    assert _runs("ro") == []


def test_an_experiment_mlflow_refuses_is_reported_with_its_reason(fast_store, tmp_path, capsys) -> None:
    assert cli.main(["run", str(_params(tmp_path, experiment="x" * 501))]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"con2 run: parameter experiment='x{60}\.\.\.\(501 characters\)' could not be created: \S.*",
                        err), err
    assert "AttributeError" not in err and "\n" not in err


def test_an_unreachable_tracking_server_is_reported_within_30_s(store, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    started = time.monotonic()
    assert cli.main(["run", str(_params(tmp_path))]) == 2
    assert time.monotonic() - started < 30
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"con2 run: the tracking server http://127.0.0.1:9 cannot be reached \(Connection refused\); "
                        r"start it, or fix MLFLOW_TRACKING_URI", err), err


# --- 8: a full disk --------------------------------------------------------------------------------------------

def test_a_store_that_cannot_record_the_end_is_one_line(fast_store, tmp_path, monkeypatch, capsys) -> None:
    import papermill

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def cannot_end(self: Any, run_id: str, status: str = "FINISHED", **kwargs: Any) -> None:
        raise MlflowException("(sqlite3.OperationalError) database or disk is full")

    monkeypatch.setattr(papermill, "execute_notebook", disk_full)
    monkeypatch.setattr(MlflowClient, "set_terminated", cannot_end)
    make_experiment("full", tmp_path)
    assert cli.main(["run", str(_params(tmp_path, experiment="full")), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert re.fullmatch(r"con2 run: FAILED: the tracking store could not record the end of MLflow run \w+ after "
                        r"OSError: \[Errno 28\] No space left on device: MlflowException: \(sqlite3.OperationalError\) "
                        r"database or disk is full \(a full disk\? the next start marks it FAILED\)", err[-1]), err


class _FullDisk:
    """A file that takes half of what is written, then reports a full disk."""

    def __init__(self, f: Any) -> None:
        self.f = f

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.f.close()

    def write(self, text: str) -> None:
        self.f.write(text[: len(text) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")


def test_the_executed_notebook_is_written_whole_or_not_at_all(tmp_path, monkeypatch) -> None:
    from papermill.iorw import papermill_io

    out = tmp_path / "train.ipynb"
    path = run_files.atomic_notebook_path(out)
    first = nbformat.writes(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]))
    papermill_io.write(first, path)
    real_fdopen = os.fdopen
    monkeypatch.setattr(run_files.os, "fdopen", lambda *a, **k: _FullDisk(real_fdopen(*a, **k)))
    with pytest.raises(OSError, match="No space left"):
        papermill_io.write(nbformat.writes(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(str(i)) for i in range(50)])), path)
    assert out.read_text() == first  # the previous cell's notebook, complete
    assert [p.name for p in tmp_path.iterdir()] == ["train.ipynb"]  # no temporary file left behind


# --- minor: a continued run keeps no stale traceback --------------------------------------------------------

def test_a_continued_run_drops_the_traceback_of_its_interruption(fast_store, tmp_path) -> None:
    client = MlflowClient()
    run_id = client.create_run(make_experiment("stale", tmp_path)).info.run_id
    tracking.record_failure(run_id, "KeyboardInterrupt", "Traceback ...\nKeyboardInterrupt\n")
    client.set_terminated(run_id, "KILLED")
    assert "error/traceback.txt" in artifact_paths(client, run_id)
    reopen(client, run_id, {"con2.pid": str(os.getpid())})
    assert "error/traceback.txt" not in artifact_paths(client, run_id)
    assert tracking.TAG_FAILURE not in client.get_run(run_id).data.tags


# --- 7: scoring -----------------------------------------------------------------------------------

@pytest.mark.parametrize("out,why", [("{tmp}/nonexistent/x.csv", r"cannot be written \(No such file or directory\)"),
                                     ("{tmp}", r"is a folder: name a CSV file")])
def test_con2_score_checks_out_before_scoring(tmp_path, monkeypatch, capsys, out, why) -> None:
    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded although --out cannot be written")

    monkeypatch.setattr(mlflow.pyfunc, "load_model", never)
    (tmp_path / "a.png").write_bytes(b"")
    out = out.format(tmp=tmp_path)
    assert cli.main(["score", "--model", "runs:/0123/model", str(tmp_path / "a.png"), "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(rf"con2 score: --out {re.escape(out)} {why}; nothing was scored", err), err


# --- 6: figures come after the checkpoint and the model -----------------------------------------------------

def test_the_notebook_saves_checkpoint_and_model_before_figures() -> None:
    cells = [c.source for c in nbformat.read(ROOT / "notebooks" / "train.ipynb", 4).cells if c.cell_type == "code"]

    def first(text: str) -> int:
        return next(i for i, source in enumerate(cells) if text in source)

    assert max(first("save_checkpoint("), first("log_model(")) < first("representation_space(")
    assert cells[-1].rstrip().endswith("mlflow.end_run()")


# --- issue 21, item 11: a store locked by another process ----------------------------------------------------

def test_a_store_locked_by_another_process_is_reported_naming_it(fast_store, tmp_path, monkeypatch, capsys) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from con2lib.runs import store; "
                               "held = store.creation_lock(sys.argv[1]); held.__enter__(); "
                               "print('held', flush=True); time.sleep(60)",
                               fast_store["MLFLOW_TRACKING_URI"]], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={**fast_store, "PYTHONPATH": str(ROOT)})
    monkeypatch.setenv("CON2_STORE_LOCK_TIMEOUT_S", "1")
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        assert cli.main(["run", str(_params(tmp_path, experiment="locked"))]) == 2
        assert time.monotonic() - started < 30
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(rf"con2 run: the tracking store \S+/mlflow.db is locked by process {holder.pid} on \S+ \(lock "
                        r"file \S+/mlflow.db.lock, waited 1 s\); wait for it to finish, or stop it", err), err
    assert _runs("locked") == []


# --- issue 21, item 13: a run that failed on a full disk is continued ----------------------------------------

@pytest.mark.parametrize(("failure", "continued"), [
    ("OSError: [Errno 28] checkpoint /r/checkpoint.pt could not be written (No space left on device); the previous "
     "checkpoint is kept", True),
    ("MlflowException: (sqlite3.OperationalError) database or disk is full", True),
    ("ValueError: data set 'folder': no usable image", False),  # an error of its own would recur: afresh
])
def test_a_run_that_failed_on_a_full_disk_is_continued_from_its_checkpoint(fast_store, tmp_path, capsys, failure,
                                                                           continued) -> None:
    experiment_id = make_experiment("full2", tmp_path)
    params = _params(tmp_path, experiment="full2")
    key = config_key(Config.from_params(yaml.safe_load(params.read_text())).to_dict())
    client = MlflowClient()
    run_id = client.create_run(experiment_id, tags={TAG_RESUME_KEY: key}).info.run_id
    tracking.record_failure(run_id, failure)
    client.set_terminated(run_id, "FAILED")
    save_checkpoint(tracking.run_dir(run_id) / "checkpoint.pt", {"epoch": 4, "training": {}})
    assert cli.main(["run", str(params), "--quiet", "--notebook", str(_sleepy_notebook(tmp_path, 0))]) == 0
    out = capsys.readouterr().out
    assert (f"con2 run: continuing MLflow run {run_id} from its checkpoint of epoch 4" in out) == continued, out
    assert len(_runs("full2")) == (1 if continued else 2)
    assert (client.get_run(run_id).info.status == "FINISHED") == continued


# --- issue 21, item 14: experiment names never leave the artifact root ---------------------------------------

@pytest.mark.parametrize(("name", "folder"), [("..", "experiment"), (".", "experiment"), ("../up", "up"),
                                              (".hidden", "hidden"), ("a..b", "a..b")])
def test_an_experiment_name_stays_one_folder_under_the_artifact_root(fast_store, tmp_path, name, folder) -> None:
    from con2lib.runs import store

    experiment_id = tracking.setup(name)
    location = store.local_artifact_folder(MlflowClient().get_experiment(experiment_id).artifact_location)
    root = store.sqlite_artifacts(fast_store["MLFLOW_TRACKING_URI"])
    assert location == root / folder and location.resolve().parent == root.resolve()


# --- issue 21, item 15: a store whose disk fills, a parameter the store cannot hold ----------------------------

def test_a_store_whose_disk_fills_prints_no_tracebacks(fast_store, tmp_path, monkeypatch, capsys) -> None:
    import sqlite3

    import papermill
    import sqlalchemy
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    def refuse(session: Any, context: Any, instances: Any) -> None:  # every write from now on: SQLite's SQLITE_FULL
        raise sqlalchemy.exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))

    def disk_fills(*args: Any, **kwargs: Any) -> None:
        event.listen(Session, "before_flush", refuse)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(papermill, "execute_notebook", disk_fills)
    make_experiment("fills", tmp_path)
    try:
        assert cli.main(["run", str(_params(tmp_path, experiment="fills")), "--quiet"]) == 1
    finally:
        event.remove(Session, "before_flush", refuse)
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err) and len(err) <= 5, "\n".join(err)
    assert re.fullmatch(r"con2 run: FAILED: the tracking store could not record the end of MLflow run \w+ after "
                        r"OSError: \[Errno 28\] No space left on device: MlflowException: .*database or disk is full.*",
                        err[-1]), err


@pytest.mark.parametrize("name", ["run_name", "experiment"])
def test_a_parameter_the_store_cannot_hold_is_one_line_naming_it(fast_store, tmp_path, capsys, name) -> None:
    assert cli.main(["run", str(_params(tmp_path)), "-p", name, '"x\\ud800"']) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"con2 run: parameter {name}='x\\ud800' is not valid text: character '\\ud800' at position 1 "
                   "cannot be written as UTF-8"), err
