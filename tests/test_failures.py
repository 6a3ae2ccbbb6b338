"""Every way a run can go wrong ends in one clear message, a FAILED (or KILLED) MLflow run, nothing lost.

Three tests start a real ``con2 run`` (a bad parameter, a NaN loss, a SIGKILL); the others run the same
code in-process: ``cli.main``, or the training notebook's own cells in an IPython shell (the kernel's
code path without the kernel's start-up).
"""

from __future__ import annotations

import collections
import errno
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import mlflow
import nbformat
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from con2lib import cli
from con2lib.config import Config
from con2lib.method import checkpoint
from con2lib.method.checkpoint import load_checkpoint, save_checkpoint
from con2lib.runs import store, tracking

from conftest import ROOT, TINY, artifact_paths, con2_command, make_experiment, notebook_with_cell


def write_params(tmp_path: Path, **params: Any) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({**TINY, **params}))
    return path


def all_runs() -> list:
    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids) if ids else []


def only_run(experiment: str) -> Any:
    client = MlflowClient()
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return run


# --- parameters: one line on stderr, exit code 2, no MLflow run --------------------------------------

def test_bad_parameter_through_con2_run_is_one_line_and_creates_no_run(fast_store, tmp_path) -> None:
    params = write_params(tmp_path, experiment="bad")
    proc = subprocess.run(con2_command("run", str(params), "-p", "epochs", "0"), cwd=ROOT, env=fast_store,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "con2 run: parameter epochs=0 is invalid: expected an integer > 0"
    assert "Traceback" not in proc.stderr
    assert all_runs() == []


@pytest.mark.parametrize("params,message", [
    ({"epoch": 3}, r"unknown parameter\(s\) 'epoch'; allowed: .*epochs"),
    ({"dataset": "imagenet1k"}, r"parameter dataset='imagenet1k' is invalid: expected one of .*digits"),
    ({"context": "rotate"}, r"parameter context='rotate' is invalid: expected one of invert, flip, equalize"),
    ({"loss": "byol"}, r"parameter loss='byol' is invalid: expected one of con2"),
    ({"device": "tpu"}, r"parameter device='tpu' is invalid: expected one of auto, cpu"),
    pytest.param({"device": "mps"}, r"parameter device='mps' is invalid: no MPS device",
                 marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS exists here")),
    ({"epochs": "10"}, r"parameter epochs='10' has type str; expected int"),
    ({"batch_size": 1}, r"parameter batch_size=1 is invalid: expected an integer >= 2"),
    ({"tta": 3}, r"parameter tta=3 is invalid: expected a positive multiple of the 2 contexts"),
    ({"tta": -2}, r"parameter tta=-2 is invalid"),
    ({"temperature": 0}, r"parameter temperature=0.0 is invalid: expected a number > 0"),
    ({"image_size": 4}, r"parameter image_size=4 is invalid: expected an integer in \[8, 1024\]"),
])
def test_bad_parameters_through_cli_are_one_line_and_create_no_run(fast_store, tmp_path, capsys, params,
                                                                    message) -> None:
    assert cli.main(["run", str(write_params(tmp_path, **params))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("con2 run: ") and re.search(message, err), err
    assert all_runs() == []


def test_bad_params_files_are_one_line(fast_store, tmp_path, capsys) -> None:
    assert cli.main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert re.fullmatch(r"con2 run: params file \S+missing.yaml does not exist", capsys.readouterr().err.strip())
    (tmp_path / "broken.yaml").write_text("epochs: [1\n")
    assert cli.main(["run", str(tmp_path / "broken.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken.yaml is not valid YAML" in err
    assert all_runs() == []


def test_plain_papermill_bad_parameter_shows_one_line(fast_store, tmp_path) -> None:
    import papermill

    with pytest.raises(papermill.PapermillExecutionError) as info:
        papermill.execute_notebook(str(ROOT / "notebooks" / "train.ipynb"), str(tmp_path / "out.ipynb"),
                                   parameters={"epochs": 0}, cwd=str(ROOT), progress_bar=False)
    assert info.value.ename == "ValueError"
    assert info.value.traceback == ["ValueError: parameter epochs=0 is invalid: expected an integer > 0"]
    assert all_runs() == []  # the config is checked before the run starts


# --- the notebook's cells, in-process ----------------------------------------------------------------

@pytest.fixture(scope="module")
def _ipython() -> Any:
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config as TraitletsConfig

    settings = TraitletsConfig()
    settings.HistoryManager.hist_file = ":memory:"
    return InteractiveShell.instance(config=settings)


@pytest.fixture
def notebook(fast_store, monkeypatch, _ipython) -> Any:
    """Runs the training notebook's code cells in an IPython shell until one fails; returns the failure."""
    monkeypatch.setattr("plotly.basedatatypes.BaseFigure.show", lambda self, *a, **k: None)
    _ipython.reset()

    def run(params: dict[str, Any], until: str = "") -> Any:
        cells = [c.source for c in nbformat.read(ROOT / "notebooks" / "train.ipynb", 4).cells if c.cell_type == "code"]
        _ipython.user_ns.update(params)  # what papermill's injected cell does
        for source in cells[1:]:  # the parameters cell would overwrite them
            result = _ipython.run_cell(source)
            if not result.success:
                return result.error_in_exec
            if until and until in source:
                return None
        return None

    yield run
    _ipython.set_custom_exc((), None)
    while mlflow.active_run() is not None:
        mlflow.end_run("KILLED")


@pytest.mark.parametrize("params,message", [
    ({"normal_class": 42}, r"ValueError: parameter normal_class=42 is not a class of digits; expected one of 0=0"),
    ({"dataset": "fashionmnist", "data_root": "{tmp}/empty"},
     r"FileNotFoundError: data set 'fashionmnist' not found under data_root='\S+/empty'"),
])
def test_data_errors_are_one_line_and_the_run_ends_failed(notebook, tmp_path, capsys, params, message) -> None:
    make_experiment("data", tmp_path)
    (tmp_path / "empty").mkdir()
    params = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in params.items()}
    error = notebook({**TINY, "experiment": "data", **params})
    assert isinstance(error, (ValueError, FileNotFoundError))
    out = capsys.readouterr().out
    assert re.search(message, out) and "Traceback" not in out and "full traceback: artifact error/traceback.txt" in out
    run = only_run("data")
    assert run.info.status == "FAILED"
    assert re.match(message, run.data.tags[tracking.TAG_FAILURE])
    assert "error/traceback.txt" in artifact_paths(MlflowClient(), run.info.run_id)


@pytest.mark.parametrize("raised,status", [(RuntimeError, "FAILED"), (KeyboardInterrupt, "KILLED")])
def test_exception_mid_epoch_ends_run_with_traceback_and_last_checkpoint(notebook, tmp_path, monkeypatch, raised,
                                                                         status) -> None:
    import con2lib.method.train

    objective, calls = con2lib.method.train._objective, []

    def failing_objective(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:  # epoch 2, step 1 (2 steps per epoch)
            raise raised("injected failure at epoch 2")
        return objective(*args, **kwargs)

    monkeypatch.setattr(con2lib.method.train, "_objective", failing_objective)
    make_experiment("mid", tmp_path)
    error = notebook({**TINY, "experiment": "mid", "epochs": 3, "checkpoint_every": 1}, until="fit(")
    assert isinstance(error, raised)
    client = MlflowClient()
    run = only_run("mid")
    assert run.info.status == status
    assert run.data.tags[tracking.TAG_FAILURE] == f"{raised.__name__}: injected failure at epoch 2"
    assert {"error/traceback.txt", "checkpoint/checkpoint.pt"} <= artifact_paths(client, run.info.run_id)
    text = Path(client.download_artifacts(run.info.run_id, "error/traceback.txt", str(tmp_path))).read_text()
    assert "Traceback" in text and "failing_objective" in text
    ckpt = load_checkpoint(client.download_artifacts(run.info.run_id, "checkpoint/checkpoint.pt", str(tmp_path)))
    assert ckpt["epoch"] == 1  # the last good state
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 1


# --- during a run, through con2 run ------------------------------------------------------------------

NAN_FROM_EPOCH_3 = """
import con2lib.method.train as _train
_objective, _calls = _train._objective, []
def _nan_from_step_5(*args, **kwargs):
    _calls.append(1)
    total, l_context, l_content = _objective(*args, **kwargs)
    return (total * float("nan") if len(_calls) >= 5 else total), l_context, l_content
_train._objective = _nan_from_step_5
"""


def test_nan_loss_through_con2_run_fails_the_run_and_keeps_the_last_good_checkpoint(fast_store, tmp_path) -> None:
    make_experiment("nan", tmp_path)
    params = write_params(tmp_path, experiment="nan", epochs=3, checkpoint_every=1)
    injected = notebook_with_cell(tmp_path, NAN_FROM_EPOCH_3, after="Config.from_namespace(globals())")
    proc = subprocess.run(con2_command("run", str(params), "--notebook", str(injected), "--quiet"), cwd=ROOT,
                          env=fast_store, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "con2 run: FAILED: NonFiniteLossError: non-finite loss nan at epoch 3, step 5" in proc.stderr
    client = MlflowClient()
    run = only_run("nan")
    assert run.info.status == "FAILED"
    assert run.data.tags[tracking.TAG_FAILURE].startswith("NonFiniteLossError: non-finite loss nan at epoch 3, step 5")
    assert {"error/traceback.txt", "notebook/train.ipynb", "checkpoint/checkpoint.pt"} <= \
        artifact_paths(client, run.info.run_id)
    ckpt = load_checkpoint(client.download_artifacts(run.info.run_id, "checkpoint/checkpoint.pt", str(tmp_path)))
    assert ckpt["epoch"] == 2 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    executed = nbformat.read(client.download_artifacts(run.info.run_id, "notebook/train.ipynb", str(tmp_path)), 4)
    [error] = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert error.ename == "NonFiniteLossError" and len(error.traceback) == 2  # one line, and where the rest is


@pytest.mark.parametrize("raised,status,code", [(KeyboardInterrupt, "KILLED", 130),
                                                (RuntimeError("Kernel died"), "FAILED", 1)])
def test_con2_run_ends_the_run_when_the_kernel_cannot(fast_store, tmp_path, monkeypatch, capsys, raised, status,
                                                      code) -> None:
    import papermill

    def dies(input_path: str, output_path: str, parameters: dict, **kwargs: Any) -> None:
        run_id = parameters["run_id"]
        Path(output_path).write_text(nbformat.writes(nbformat.v4.new_notebook()))
        save_checkpoint(tracking.run_dir(run_id) / "checkpoint.pt", {"epoch": 7})
        raise raised

    monkeypatch.setattr(papermill, "execute_notebook", dies)
    make_experiment("cli", tmp_path)
    assert cli.main(["run", str(write_params(tmp_path, experiment="cli")), "--quiet"]) == code
    assert f"con2 run: {status}: " in capsys.readouterr().err
    run = only_run("cli")
    assert run.info.status == status and tracking.TAG_FAILURE in run.data.tags
    assert {"error/traceback.txt", "notebook/train.ipynb", "checkpoint/checkpoint.pt"} <= \
        artifact_paths(MlflowClient(), run.info.run_id)


def test_dead_runs_are_marked_failed_on_next_start(fast_store, tmp_path) -> None:
    client = MlflowClient()
    experiment_id = make_experiment("dead", tmp_path)
    finished = subprocess.Popen(["true"])
    finished.wait()
    dead_pid = finished.pid
    host = tracking.socket.gethostname()
    runs = {name: client.create_run(experiment_id, tags={tracking.TAG_PID: str(pid), tracking.TAG_HOST: h}).info.run_id
            for name, pid, h in [("dead", dead_pid, host), ("alive", os.getpid(), host),
                                 ("elsewhere", dead_pid, "another-host")]}
    save_checkpoint(tracking.run_dir(runs["dead"]) / "checkpoint.pt", {"epoch": 3})
    make_experiment("next", tmp_path)
    tracking.start_run(Config.from_params({**TINY, "experiment": "next"}))  # another experiment: all are checked
    mlflow.end_run()
    dead = client.get_run(runs["dead"])
    assert dead.info.status == "FAILED" and "died" in dead.data.tags[tracking.TAG_FAILURE]
    assert "checkpoint/checkpoint.pt" in artifact_paths(client, runs["dead"])
    assert client.get_run(runs["alive"]).info.status == "RUNNING"
    assert client.get_run(runs["elsewhere"]).info.status == "RUNNING"


def test_sigkilled_con2_run_is_marked_failed_on_next_start(fast_store, tmp_path) -> None:
    make_experiment("killed", tmp_path)
    params = write_params(tmp_path, experiment="killed", epochs=1000, checkpoint_every=1)
    proc = subprocess.Popen(con2_command("run", str(params), "--quiet"), cwd=ROOT, env=fast_store,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client, kernel_pid, run_id = MlflowClient(), 0, ""
    try:
        deadline = time.monotonic() + 300
        while not kernel_pid and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            runs = all_runs()
            if runs and (tracking.run_dir(runs[0].info.run_id) / "checkpoint.pt").is_file():
                run_id, pid = runs[0].info.run_id, runs[0].data.tags[tracking.TAG_PID]  # the kernel's, once it ran
                kernel_pid = int(pid) if pid != str(proc.pid) else 0
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # con2 run itself; its kernel has a session of its own
        if kernel_pid:
            os.kill(kernel_pid, signal.SIGKILL)
        proc.wait()
    assert kernel_pid, "training never started"
    deadline = time.monotonic() + 30
    while tracking._alive(kernel_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.get_run(run_id).info.status == "RUNNING"  # nobody could say otherwise
    make_experiment("after", tmp_path)
    tracking.start_run(Config.from_params({**TINY, "experiment": "after"}))
    mlflow.end_run()
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and "died" in run.data.tags[tracking.TAG_FAILURE]
    assert {"checkpoint/checkpoint.pt", "notebook/train.ipynb"} <= artifact_paths(client, run_id)


# --- checkpoints -------------------------------------------------------------------------------------

def test_truncated_checkpoint_is_reported_and_a_failed_write_keeps_the_previous(tmp_path, monkeypatch) -> None:
    path = save_checkpoint(tmp_path / "checkpoint.pt", {"model": {"w": torch.ones(1000)}, "epoch": 1})

    def disk_full(state: Any, f: Any) -> None:
        f.write(b"PK\x03\x04partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(OSError, match=r"checkpoint \S+checkpoint.pt could not be written \(No space left on device\); "
                                      r"the previous checkpoint is kept"):
        save_checkpoint(path, {"model": {"w": torch.zeros(1000)}, "epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1 and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"checkpoint \S+ is truncated or corrupt .*and was not loaded"):
        load_checkpoint(path)


EXECUTED: list[str] = []


def _run_code(note: str) -> None:
    EXECUTED.append(note)


class Payload:
    """Unpickling this calls a function: what a malicious checkpoint does."""

    def __reduce__(self) -> tuple:
        return _run_code, ("code ran at load time",)


class Shell:
    """A tampered file (issue 16): unpickling it would run a shell command; torch blocks ``os`` by module."""

    def __reduce__(self) -> tuple:
        return os.system, ("echo tampered",)


@pytest.mark.parametrize("payload,name", [(Payload, r"\S*_run_code"), (Shell, rf"{os.system.__module__}\.system")])
def test_checkpoint_with_a_pickled_object_is_refused(tmp_path, payload: type, name: str) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.ones(2)}, "payload": payload()}, path)
    with pytest.raises(ValueError, match=rf"references {name} \(not a tensor or plain literal\) and was "
                                         r"refused: loading it could run arbitrary code"):
        load_checkpoint(path)
    assert EXECUTED == []
    with pytest.raises(TypeError, match=r"checkpoint state\['payload'\] is a \S+Payload"):
        save_checkpoint(tmp_path / "never.pt", {"model": {}, "payload": Payload()})
    assert not (tmp_path / "never.pt").exists()


# --- the store: checked at start ---------------------------------------------------------------------

def test_unwritable_store_is_reported_at_start(store, tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "file.txt").write_text("a file, not a folder")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("CON2_HOME", str(tmp_path / "file.txt"))  # the store would be file.txt/mlruns
    assert cli.main(["run", str(write_params(tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"con2 run: the tracking store folder \S+/file.txt/mlruns is not writable \(Not a directory\);"
                        r" free disk space, fix permissions, or set MLFLOW_TRACKING_URI / CON2_RUNS_DIR", err), err


@pytest.mark.parametrize(("free", "shown"), [(50 * 2**20, "50.0"), (store.MIN_FREE_BYTES - 1, "99.9")])
def test_low_disk_space_is_reported_at_start(fast_store, tmp_path, monkeypatch, capsys, free, shown) -> None:
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(store.shutil, "disk_usage", lambda path: usage(10**12, 10**12, free))
    assert cli.main(["run", str(write_params(tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    # one byte short of the limit must not read "100 MB free, below the 100 MB" (issue 21)
    assert re.fullmatch(rf"con2 run: the runs folder \(checkpoints\) \S+ has only {shown} MB free, below the 100 MB "
                        r"a run needs for checkpoints and artifacts; .*", err), err
    assert all_runs() == []


# --- serving -----------------------------------------------------------------------------------------

def test_ui_and_lab_bind_to_localhost_by_default(store, monkeypatch) -> None:
    commands = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd: commands.append(cmd) or 0)
    assert cli.main(["ui"]) == 0 and cli.main(["ui", "--host", "0.0.0.0"]) == 0
    assert commands[0][commands[0].index("--host") + 1] == "127.0.0.1"
    assert commands[1][commands[1].index("--host") + 1] == "0.0.0.0"
    assert "--ip 127.0.0.1" in (ROOT / "Makefile").read_text()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("root", [True, False])
def test_make_lab_starts_without_a_browser_and_as_root_when_root(tmp_path, root) -> None:
    # a fake `id` answers the uid: `make -n` prints the command for a root and for a normal user
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "id").write_text(f"#!/bin/sh\necho {0 if root else 1000}\n")
    (fake / "id").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    out = subprocess.run(["make", "-n", "lab", f"VENV={tmp_path / 'venv'}"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    [command] = [line for line in out.stdout.splitlines() if "jupyter lab" in line]
    assert "--no-browser" in command and "--ip 127.0.0.1" in command
    assert ("--allow-root" in command) == root


# --- issue 21, item 15: extends chains ------------------------------------------------------------------------

def test_a_long_extends_chain_and_an_extended_folder_are_one_line(fast_store, tmp_path, capsys) -> None:
    (tmp_path / "f0.yaml").write_text("epochs: 1\n")
    for i in range(1, 1200):  # 1,200 files: beyond Python's recursion limit (a RecursionError before)
        (tmp_path / f"f{i}.yaml").write_text(f"extends: f{i - 1}.yaml\n")
    assert cli.main(["run", str(tmp_path / "f1199.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"con2 run: params file \S+/f1149\.yaml: the extends chain is longer than 50 files", err), err
    (tmp_path / "presets").mkdir()
    (tmp_path / "folder.yaml").write_text("extends: presets\n")
    assert cli.main(["run", str(tmp_path / "folder.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"con2 run: params file \S+/presets is a folder; name a \.yaml file in it", err), err
