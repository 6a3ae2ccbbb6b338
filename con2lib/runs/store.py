"""The tracking store, checked at start: everything a run will write to is writable, reachable and created once.

Said in one line before any data is read, rather than after hours of training: an unwritable store,
runs folder or experiment artifact location, a full disk, an unreachable tracking server (in seconds,
not after MLflow's minutes of retries), an experiment that cannot be created (MLflow's reason). A new
SQLite store is created under a file lock, so runs started together do not race MLflow's migrations.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; start the first run alone there
    fcntl = None  # type: ignore[assignment]

MIN_FREE_BYTES = 100 * 2**20  # refuse to start below this: checkpoints and artifacts need room
LOCK_TIMEOUT_S = 60  # a start waits this long for another process creating or opening the SQLite store
SERVER_TIMEOUT_S = 10  # a tracking server that does not answer within this at start is reported unreachable
_HINT = "free disk space, fix permissions, or set MLFLOW_TRACKING_URI / CON2_RUNS_DIR"


def check_writable(folder: Path, what: str = "tracking store folder") -> None:
    """Raises ValueError unless ``folder`` can be created, written, and has MIN_FREE_BYTES free."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"\0" * 4096)
        probe.unlink()
        free = shutil.disk_usage(folder).free
    except OSError as err:
        raise ValueError(f"the {what} {folder} is not writable ({err.strerror or err}); {_HINT}") from err
    if free < MIN_FREE_BYTES:
        shown = math.floor(free / 2**20 * 10) / 10  # rounded down: 99.96 MB must not read "100 MB free, below 100"
        raise ValueError(f"the {what} {folder} has only {shown:.1f} MB free, below the "
                         f"{MIN_FREE_BYTES / 2**20:.0f} MB a run needs for checkpoints and artifacts; {_HINT}")


def check_text(values: dict[str, Any]) -> None:
    """Raises ValueError naming the first parameter whose text the store cannot hold (a lone surrogate such
    as ``"\\ud800"`` is no UTF-8: SQLAlchemy would fail on it mid-run with a long traceback)."""
    for name, value in values.items():
        for text in value if isinstance(value, (list, tuple)) else [value]:
            if not isinstance(text, str):
                continue
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as err:
                raise ValueError(f"parameter {name}={shorten(text)!r} is not valid text: character "
                                 f"{text[err.start]!r} at position {err.start} cannot be written as UTF-8") from err


class _NoStoreTracebacks(logging.Filter):
    """Drops MLflow's logged traceback of a failed SQL statement (about 70 lines per call): the error is raised
    as an MlflowException anyway, and con2 says it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("SQLAlchemy database error")


@contextlib.contextmanager
def brief_store_errors() -> Iterator[None]:
    """Within the block a store that fails (a full disk) logs no tracebacks; its errors are still raised."""
    logger, brief = logging.getLogger("mlflow.store.db.utils"), _NoStoreTracebacks()
    logger.addFilter(brief)
    try:
        yield
    finally:
        logger.removeFilter(brief)


def check_server(uri: str, timeout_s: float = SERVER_TIMEOUT_S) -> None:
    """Raises ValueError when the tracking server at an ``http(s)://`` URI does not answer.

    Any HTTP answer (an error status, a login page) means it is there; MLflow reports the rest itself.
    """
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()  # noqa: S310 - http(s) only
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ValueError(f"the tracking server {uri} cannot be reached ({getattr(reason, 'strerror', None) or reason}); "
                         "start it, or fix MLFLOW_TRACKING_URI") from err


def local_folders(uri: str, runs_root: Path) -> list[tuple[Path, str]]:
    """The local folders a run writes to: the runs folder (checkpoints) and the store (when local)."""
    folders = [(runs_root, "runs folder (checkpoints)")]
    if uri.startswith("sqlite:///"):
        folders.append((Path(uri.removeprefix("sqlite:///")).parent, "tracking store folder"))
        folders.append((sqlite_artifacts(uri), "tracking store folder"))
    elif uri.startswith("file://") or os.path.isabs(uri):  # MLflow's plain file store
        folders.append((Path(uri.removeprefix("file://")), "tracking store folder"))
    return folders


def sqlite_artifacts(uri: str) -> Path:
    """Artifacts of a SQLite store: ``artifacts/`` next to the database file."""
    return Path(uri.removeprefix("sqlite:///")).parent / "artifacts"


def local_artifact_folder(location: str) -> Path | None:
    """The folder of a local artifact location (``file://`` URI or path); None for a remote one."""
    if location.startswith("file:"):
        return Path(urllib.parse.unquote(urllib.parse.urlparse(location).path))
    return Path(location) if os.path.isabs(location) else None


def one_line(error: BaseException | str, limit: int = 500) -> str:
    """An error message on one line (SQLAlchemy's span three: the SQL and a link), at most ``limit`` characters."""
    return " ".join(str(error).split())[:limit]


def shorten(name: str) -> str:
    """A name as shown in a one-line message: up to 80 characters."""
    return name if len(name) <= 80 else f"{name[:60]}...({len(name)} characters)"


@contextlib.contextmanager
def creation_lock(uri: str, timeout_s: float | None = None) -> Iterator[None]:
    """Holds an exclusive lock beside a SQLite store while MLflow opens it (and, when new, creates its tables).

    The holder writes ``process <pid> on <host>`` into the lock file, so a start that waits longer than
    ``timeout_s`` (default :data:`LOCK_TIMEOUT_S`, or ``$CON2_STORE_LOCK_TIMEOUT_S``) names it.

    Raises:
        ValueError: another process held the lock for the whole wait; the message names it.
    """
    if not uri.startswith("sqlite:///") or fcntl is None:
        yield
        return
    if timeout_s is None:
        timeout_s = float(os.environ.get("CON2_STORE_LOCK_TIMEOUT_S") or LOCK_TIMEOUT_S)
    lock = Path(uri.removeprefix("sqlite:///") + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:  # closing the descriptor releases the lock, however this process ends
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                    raise ValueError(f"the tracking store {lock.with_suffix('')} is locked by {holder} (lock file "
                                     f"{lock}, waited {timeout_s:.0f} s); wait for it to finish, or stop it") from err
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # a later holder that writes no name must not be taken for this process
    finally:
        os.close(fd)


# How the MLflow UI shows a con2 experiment (con2lib.runs.mlflow_ui): its kind, model training, and a shared view
# (opened by ?viewStateShareKey=con2) whose runs table shows the AUROC columns.
KIND_TAG, KIND_TRAINING = "mlflow.experimentKind", "custom_model_development"
VIEW_KEY = "con2"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
COLUMNS = ("metrics.`auroc_nnd`", "metrics.`auroc_lh`", "metrics.`auroc_pixel_knn`", "metrics.`auroc_ssd`",
           "params.`dataset`", "params.`normal_class`", "params.`context`", "params.`epochs`")


def ui_tags() -> dict[str, str]:
    """The tags of every experiment con2 creates: its kind, and the shared view with the AUROC columns."""
    view = {"selectedColumns": list(COLUMNS), "orderByKey": "attributes.start_time", "orderByAsc": False}
    return {KIND_TAG: KIND_TRAINING, VIEW_TAG: json.dumps(view)}


def get_or_create_experiment(client: Any, name: str, location: str | None) -> Any:
    """The experiment ``name``, created (at ``location``) if it does not exist.

    Raises:
        ValueError: the store refused to create it (a name too long, a deleted experiment of that name);
            the message is MLflow's reason.
    """
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found
    try:
        return client.get_experiment(client.create_experiment(name, artifact_location=location, tags=ui_tags()))
    except MlflowException as err:
        found = client.get_experiment_by_name(name)  # created concurrently by another worker?
        if found is None:
            shown = shorten(name)
            reason = " ".join(str(err.message if hasattr(err, "message") else err).split())
            raise ValueError(f"parameter experiment={shown!r} could not be created: {reason[:500]}") from err
        return found
