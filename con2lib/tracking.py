"""MLflow tracking: one store for the project, runs that never stay RUNNING after their process died.

The store is ``MLFLOW_TRACKING_URI`` when the user sets it, else SQLite at ``<project>/mlruns/mlflow.db``
with artifacts under ``<project>/mlruns/artifacts`` (absolute paths, so a notebook kernel started in
``notebooks/`` and a shell in the project root write to the same store).
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from con2lib.config import Config
from con2lib.paths import project_root

TAG_PID, TAG_HOST = "con2.pid", "con2.host"


def local_store_uri() -> str:
    """The project's own SQLite store."""
    return f"sqlite:///{project_root() / 'mlruns' / 'mlflow.db'}"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the project's SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or local_store_uri()


def artifact_root() -> Path:
    """Where the local store keeps artifacts."""
    return project_root() / "mlruns" / "artifacts"


def setup(experiment: str) -> str:
    """Points MLflow at the store, creates the experiment if needed, and returns its id.

    Raises:
        ValueError: the store cannot be written (unwritable folder, full disk), said at start rather
            than after hours of training.
    """
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        store = Path(uri.removeprefix("sqlite:///"))
        _check_writable(store.parent)
        _check_writable(artifact_root())
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    location = None
    if uri == local_store_uri():
        # the default would be ./mlruns relative to whatever the working directory is
        location = (artifact_root() / _slug(experiment)).as_uri()
    try:
        return client.create_experiment(experiment, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created concurrently by another worker
        return client.get_experiment_by_name(experiment).experiment_id


def start_run(cfg: Config) -> mlflow.ActiveRun:
    """Starts (or, with ``cfg.run_id``, resumes) the run and logs the whole config as params."""
    experiment_id = setup(cfg.experiment)
    mark_dead_runs_failed(experiment_id)
    if mlflow.active_run() is not None:
        mlflow.end_run("KILLED")
    if cfg.run_id:
        run = mlflow.start_run(run_id=cfg.run_id)
    else:
        run = mlflow.start_run(experiment_id=experiment_id, run_name=cfg.run_name or None)
    mlflow.set_tags({TAG_PID: str(os.getpid()), TAG_HOST: socket.gethostname()})
    mlflow.log_params({k: _param(v) for k, v in cfg.to_dict().items() if k != "run_id"})
    return run


def mark_dead_runs_failed(experiment_id: str) -> list[str]:
    """Ends as FAILED the RUNNING runs of this host whose process no longer exists; returns their ids."""
    client = MlflowClient()
    host = socket.gethostname()
    ended = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        if tags.get(TAG_HOST) != host or not tags.get(TAG_PID, "").isdigit():
            continue
        if not _alive(int(tags[TAG_PID])):
            client.set_tag(run.info.run_id, "con2.failure", "process died while the run was RUNNING")
            client.set_terminated(run.info.run_id, "FAILED")
            ended.append(run.info.run_id)
    return ended


def log_epoch(stats: Any) -> None:
    """Per-epoch metrics with the epoch as step."""
    mlflow.log_metrics({"loss": stats.loss, "loss_context": stats.loss_context, "loss_content": stats.loss_content,
                        "alpha": stats.alpha, "lr": stats.lr, "images_per_s": stats.images_per_s}, step=stats.epoch)


def log_dict_params(prefix: str, values: dict[str, Any]) -> None:
    """Logs facts (data split, class lists) as params under a prefix; long values are truncated by MLflow's limit."""
    mlflow.log_params({f"{prefix}.{k}": _param(v)[:6000] for k, v in values.items()})


def _param(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "experiment"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"\0" * 4096)
        probe.unlink()
    except OSError as err:
        raise ValueError(f"the tracking store folder {folder} is not writable ({err.strerror}); "
                         "free disk space, fix permissions, or set MLFLOW_TRACKING_URI") from err


def run_dir(run_id: str) -> Path:
    """Local working folder of a run (checkpoints, executed notebook): ``$CON2_RUNS_DIR`` or ``<project>/runs``."""
    return Path(os.environ.get("CON2_RUNS_DIR") or project_root() / "runs") / run_id


def log_figure(fig: Any, name: str) -> None:
    """Logs a plotly figure as a self-contained interactive HTML artifact (viewable offline)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.html"
        fig.write_html(path, include_plotlyjs=True, full_html=True)
        mlflow.log_artifact(str(path), artifact_path="figures")


def fail_run_on_error(shell: Any) -> None:
    """Makes any exception in a notebook cell end the active run as FAILED, traceback logged.

    The traceback is still shown (and papermill still stops with a non-zero exit); the last
    checkpoint of the run, if any, is logged so nothing trained is lost.
    """
    def handler(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: int | None = None) -> Any:
        import traceback

        run = mlflow.active_run()
        if run is not None:
            text = "".join(traceback.format_exception(etype, value, tb))
            mlflow.log_text(text, "error/traceback.txt")
            mlflow.set_tag("con2.failure", f"{etype.__name__}: {value}"[:5000])
            ckpt = run_dir(run.info.run_id) / "checkpoint.pt"
            if ckpt.is_file():
                mlflow.log_artifact(str(ckpt), artifact_path="checkpoint")
            mlflow.end_run("FAILED")
        return shell.showtraceback((etype, value, tb), tb_offset=tb_offset)

    shell.set_custom_exc((Exception,), handler)


class EpochLogger:
    """``fit``'s per-epoch callback: logs the epoch's metrics and checkpoints every k epochs.

    The checkpoint is the last *good* state: an epoch whose loss turned non-finite raises before
    this callback runs, so it never overwrites the previous checkpoint.
    """

    def __init__(self, cfg: Config, run_id: str) -> None:
        self.cfg = cfg
        self.path = run_dir(run_id) / "checkpoint.pt"

    def __call__(self, stats: Any, model: Any) -> None:
        from con2lib.checkpoint import model_state, save_checkpoint

        log_epoch(stats)
        if stats.epoch % self.cfg.checkpoint_every == 0 or stats.epoch == self.cfg.epochs:
            save_checkpoint(self.path, model_state(model, self.cfg.to_dict(), epoch=stats.epoch))
