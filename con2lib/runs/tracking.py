"""MLflow tracking: one store for the project, runs that never stay RUNNING after their process died.

The store is ``MLFLOW_TRACKING_URI`` when the user sets it, else SQLite at ``<project>/mlruns/mlflow.db``
with artifacts under ``<project>/mlruns/artifacts`` (absolute paths, so a notebook kernel started in
``notebooks/`` and a shell in the project root write to the same store).

Failures are recorded where a user looks first: a failed run ends FAILED (KILLED when interrupted)
with the tag ``con2.failure``, its traceback as ``error/traceback.txt`` and its last checkpoint as
``checkpoint/checkpoint.pt``; a run whose process was killed is marked FAILED by the next start (and
continued by the next start with the same parameters: con2lib.runs.resume.find_resumable).
"""

from __future__ import annotations

import os
import re
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from con2lib.runs import store
from con2lib.config import Config
from con2lib.paths import project_root
from con2lib.runs.progress import LongRunWarning, long_run_estimate
from con2lib.runs.run_info import run_name, source_tags

TAG_PID, TAG_HOST, TAG_FAILURE = "con2.pid", "con2.host", "con2.failure"
MIN_FREE_BYTES = store.MIN_FREE_BYTES  # refuse to start below this: checkpoints and artifacts need room
# Errors whose message says everything (bad parameter, missing data, non-finite loss, interruption):
# the notebook shows them as one line; the full traceback still goes to error/traceback.txt.
BRIEF_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FloatingPointError,
                                                  KeyboardInterrupt)


def local_store_uri() -> str:
    """The project's own SQLite store."""
    return f"sqlite:///{project_root() / 'mlruns' / 'mlflow.db'}"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the project's SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or local_store_uri()


def artifact_root() -> Path:
    """Where the local store keeps artifacts."""
    return project_root() / "mlruns" / "artifacts"


def runs_root() -> Path:
    """Local working folder of all runs: ``$CON2_RUNS_DIR`` or ``<project>/runs``."""
    return Path(os.environ.get("CON2_RUNS_DIR") or project_root() / "runs")


def run_dir(run_id: str) -> Path:
    """Local working folder of a run (checkpoints, executed notebook)."""
    return runs_root() / run_id


def setup(experiment: str) -> str:
    """Points MLflow at the store, creates the experiment if needed, and returns its id.

    Raises:
        ValueError: the store, the runs folder or the experiment's artifact location cannot be written
            (unwritable folder, full disk), the tracking server does not answer, or the experiment
            cannot be created: said at start (:mod:`con2lib.runs.store`) rather than after hours of training.
    """
    uri = tracking_uri()
    store.check_server(uri)
    for folder, what in store.local_folders(uri, runs_root()):
        store.check_writable(folder, what)
    mlflow.set_tracking_uri(uri)
    location = None
    if uri.startswith("sqlite:///"):
        # next to the database (for the project's store: mlruns/artifacts); MLflow's default would be
        # ./mlruns relative to whatever the working directory is
        location = (store.sqlite_artifacts(uri) / _slug(experiment)).as_uri()
    with store.creation_lock(uri):  # the first client of a new store creates its tables
        found = store.get_or_create_experiment(MlflowClient(), experiment, location)
    artifacts = store.local_artifact_folder(found.artifact_location or "")
    if artifacts is not None:  # an experiment may keep its artifacts anywhere: the model is written there
        store.check_writable(artifacts, f"artifact location of experiment {store.shorten(experiment)!r}")
    return found.experiment_id


def start_run(cfg: Config) -> mlflow.ActiveRun:
    """Starts (or, with ``cfg.run_id``, resumes) the run and logs the whole config as params.

    Runs of this host left RUNNING by a process that no longer exists are marked FAILED first.
    """
    experiment_id = setup(cfg.experiment)
    mark_dead_runs_failed()
    if mlflow.active_run() is not None:
        mlflow.end_run("KILLED")
    if cfg.run_id:
        run = mlflow.start_run(run_id=cfg.run_id)
    else:
        run = mlflow.start_run(experiment_id=experiment_id, run_name=cfg.run_name or run_name(cfg),
                               tags=source_tags(project_root()))
    mlflow.set_tags({TAG_PID: str(os.getpid()), TAG_HOST: socket.gethostname()})
    mlflow.log_params({k: _param(v) for k, v in cfg.to_dict().items() if k != "run_id"})
    return run


def mark_dead_runs_failed(experiment_ids: str | Sequence[str] | None = None) -> list[str]:
    """Ends as FAILED the RUNNING runs of this host whose process no longer exists.

    What the dead run left locally (``runs/<run id>/checkpoint.pt`` and the executed notebook) is
    logged to it, so a killed run keeps its last checkpoint.

    Args:
        experiment_ids: one id or several; ``None`` looks in every experiment of the store.

    Returns:
        The ids of the runs marked FAILED.
    """
    client = MlflowClient()
    if experiment_ids is None:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    ids = [experiment_ids] if isinstance(experiment_ids, str) else list(experiment_ids)
    if not ids:
        return []
    host = socket.gethostname()
    ended = []
    for run in client.search_runs(ids, filter_string="attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        if tags.get(TAG_HOST) != host or not tags.get(TAG_PID, "").isdigit():
            continue
        if not _alive(int(tags[TAG_PID])):
            run_id = run.info.run_id
            record_failure(run_id, f"process {tags[TAG_PID]} on {host} died while the run was RUNNING "
                                   "(killed or crashed); marked FAILED by the next start",
                           notebook=run_dir(run_id) / "train.ipynb")
            client.set_terminated(run_id, "FAILED")
            ended.append(run_id)
    return ended


def record_failure(run_id: str, summary: str, traceback_text: str | None = None,
                   notebook: Path | None = None) -> None:
    """Logs why a run failed and what it leaves: tag, traceback, last checkpoint, executed notebook.

    Never raises: the failure being recorded matters more than a failure to record it (a full disk
    or a broken store is reported on stderr instead).
    """
    client = MlflowClient()
    steps: list[tuple[str, Any]] = [("tag", lambda: client.set_tag(run_id, TAG_FAILURE, summary[:5000]))]
    if traceback_text:
        steps.append(("traceback", lambda: client.log_text(run_id, traceback_text, "error/traceback.txt")))
    checkpoint = run_dir(run_id) / "checkpoint.pt"
    if checkpoint.is_file():
        steps.append(("checkpoint", lambda: client.log_artifact(run_id, str(checkpoint), "checkpoint")))
    if notebook is not None and notebook.is_file():
        steps.append(("notebook", lambda: client.log_artifact(run_id, str(notebook), "notebook")))
    for what, step in steps:
        try:
            step()
        except Exception as err:  # noqa: BLE001
            print(f"con2: could not log the {what} of failed run {run_id}: {store.one_line(err)}", file=sys.stderr)


def describe(error: BaseException) -> str:
    """``Name: message`` of an exception (just ``Name`` when it has no message, e.g. Ctrl-C)."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def fail_run_on_error(shell: Any) -> None:
    """Makes any exception in a notebook cell end the active run as FAILED, traceback logged.

    Ctrl-C (KeyboardInterrupt) ends it KILLED. The last checkpoint of the run, if any, is logged so
    nothing trained is lost. Errors in :data:`BRIEF_ERRORS` are shown as one line (the message names
    the problem; the full traceback is in ``error/traceback.txt`` and in ``%tb``), others in full.
    The cell still errors, so papermill stops with a non-zero exit.
    """
    def handler(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: int | None = None) -> None:
        run = mlflow.active_run()
        if run is not None:
            text = "".join(traceback.format_exception(etype, value, tb))
            record_failure(run.info.run_id, describe(value), text)
            try:
                mlflow.end_run("KILLED" if issubclass(etype, KeyboardInterrupt) else "FAILED")
            except Exception as err:  # noqa: BLE001 - the original error is the one to show
                print(f"con2: could not end run {run.info.run_id}: {store.one_line(err)}", file=sys.stderr)
        if not issubclass(etype, BRIEF_ERRORS):
            shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
            return
        # %tb reads these: the full traceback stays one command away
        sys.last_type, sys.last_value, sys.last_traceback, sys.last_exc = etype, value, tb, value
        where = ([f"(full traceback: artifact error/traceback.txt of MLflow run {run.info.run_id})"]
                 if run is not None else [])
        shell._showtraceback(etype, value, [describe(value), *where])

    shell.set_custom_exc((Exception, KeyboardInterrupt), handler)


def log_epoch(stats: Any) -> None:
    """Per-epoch metrics with the epoch as step."""
    mlflow.log_metrics({"loss": stats.loss, "loss_context": stats.loss_context, "loss_content": stats.loss_content,
                        "alpha": stats.alpha, "lr": stats.lr, "images_per_s": stats.images_per_s,
                        "grad_context": stats.grad_context, "grad_content": stats.grad_content}, step=stats.epoch)


def log_dict_params(prefix: str, values: dict[str, Any]) -> None:
    """Logs facts (data split, class lists) as params under a prefix; long values are truncated by MLflow's limit."""
    mlflow.log_params({f"{prefix}.{k}": _param(v)[:6000] for k, v in values.items()})


def log_figure(fig: Any, name: str) -> None:
    """Logs a plotly figure as ``figures/<name>.html``: interactive, offline, about 2 MB
    (:mod:`con2lib.runs.figure_html`)."""
    from con2lib.runs.figure_html import figure_html

    mlflow.log_text(figure_html(fig, name), f"figures/{name}.html")


class EpochLogger:
    """``fit``'s per-epoch callback: logs the epoch's metrics, each epoch once; after the first epoch it
    warns (:class:`con2lib.runs.progress.LongRunWarning`) when training will take more than an hour.

    ``fit`` itself writes the training checkpoint (``checkpoint=``), after this callback: the last
    *good* state, since an epoch whose loss turned non-finite raises before either. A resumed run
    (docs/sweeps.md, "Resume") trains again the epochs after its last checkpoint; those already
    logged before the interruption are not logged twice.
    """

    def __init__(self, cfg: Config, run_id: str) -> None:
        self.cfg = cfg
        self.logged = max((m.step for m in MlflowClient().get_metric_history(run_id, "loss")), default=0)
        self.started, self.trained = time.perf_counter(), 0

    def __call__(self, stats: Any, model: Any) -> None:
        if stats.epoch > self.logged:
            log_epoch(stats)
        self.trained += 1
        if self.trained == 1:  # the first epoch tells how long the rest takes: say it now if that is hours
            text = long_run_estimate(time.perf_counter() - self.started, 1, self.cfg.epochs - stats.epoch)
            if text:
                warnings.warn(text, LongRunWarning, stacklevel=2)


def _param(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _slug(name: str) -> str:
    """An experiment name as one folder name under the artifact root.

    Dots are kept inside a name but stripped at its ends: ``..`` or ``.`` would leave the root (artifacts
    and models beside ``mlflow.db``), ``.name`` would be hidden.
    """
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "experiment"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process nobody has reaped yet (a zombie) still answers signal 0
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
