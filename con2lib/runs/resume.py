"""Continuing an interrupted run: find it, claim it for this process, make it RUNNING again (docs/sweeps.md, "Resume").

A run is found by its parameters (tag ``con2.resume_key``: a hash of the config without its run identity)
and parent run; it must have been interrupted and have left a training checkpoint. It is claimed
(:class:`con2lib.runs.run_files.Claim`) before it is reopened, so the same command started twice continues it
once: the second start fails naming the first.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from con2lib.runs.run_files import Claim, RunBusy

T = TypeVar("T")
TAG_RESUME_KEY, TAG_RESUMED = "con2.resume_key", "con2.resumed_from_epoch"
TAG_PARENT = "mlflow.parentRunId"
# How runs end when something outside stopped them: continuing them repeats nothing that went wrong.
# A full disk is one (a checkpoint or MLflow write failed; once there is room the run goes on from its last
# checkpoint). A run that FAILED on an error of its own (bad data, a NaN loss, a bug) starts afresh: the
# error would recur.
_INTERRUPTIONS = ("died while the run was RUNNING", "DeadKernelError", "No space left on device",
                  "[Errno 28]", "database or disk is full", "Disk quota exceeded")


def find_resumable(client: Any, experiment_id: str, key: str, parent: str = "") -> tuple[str, int, Claim] | None:
    """The latest run to continue: same parameters (``key``) and parent run, interrupted, with a training
    checkpoint; claimed for this process (:class:`con2lib.runs.run_files.Claim`), so no other start continues it too.

    Interrupted: KILLED (Ctrl-C, SIGTERM: a sweep stopped, a Slurm time limit), or FAILED because its
    process or kernel died or the disk was full. The checkpoint is ``runs/<run id>/checkpoint.pt`` here
    (any host's run, when the runs folder is shared).

    Returns:
        ``(run_id, epoch of its checkpoint, the claim)``, or None.

    Raises:
        RunBusy: another process is continuing that run (the same command started twice); the message
            names it.
    """
    from con2lib.runs import tracking
    from con2lib.method.checkpoint import training_epoch

    runs = retry_locked(lambda: client.search_runs([experiment_id], f"tags.`{TAG_RESUME_KEY}` = '{key}'",
                                                   order_by=["attributes.start_time DESC"], max_results=100))
    for run in runs:
        if run.data.tags.get(TAG_PARENT, "") != parent:
            continue
        if run.info.status == "RUNNING" and TAG_RESUMED in run.data.tags:  # continued right now: by whom?
            _claim(run.info.run_id).release()
            continue
        if not _interrupted(run):
            continue
        epoch = training_epoch(tracking.run_dir(run.info.run_id) / "checkpoint.pt")
        if epoch is None:
            continue
        claim = _claim(run.info.run_id)
        if _interrupted(client.get_run(run.info.run_id)):  # not continued (and ended) since it was searched
            return run.info.run_id, epoch, claim
        claim.release()
    return None


def _interrupted(run: Any) -> bool:
    from con2lib.runs import tracking

    failure = run.data.tags.get(tracking.TAG_FAILURE, "")
    return run.info.status == "KILLED" or (run.info.status == "FAILED" and any(m in failure for m in _INTERRUPTIONS))


def _claim(run_id: str) -> Claim:
    """Claims the run's folder, or says who holds it."""
    from con2lib.runs import tracking

    try:
        return Claim(tracking.run_dir(run_id))
    except RunBusy as busy:
        raise RunBusy(f"MLflow run {run_id} is being continued by {busy} (the same command started twice); "
                      "wait for it to end, or stop it") from busy


def reopen(client: Any, run_id: str, tags: dict[str, str]) -> None:
    """Makes an interrupted run RUNNING again, owned by this process, its failure tag removed."""
    from con2lib.runs import tracking

    for key, value in tags.items():  # the live owner first: a RUNNING run with a dead pid would be marked FAILED
        retry_locked(lambda k=key, v=value: client.set_tag(run_id, k, v))
    run = client.get_run(run_id)
    if tracking.TAG_FAILURE in run.data.tags:
        retry_locked(lambda: client.delete_tag(run_id, tracking.TAG_FAILURE))
        _delete_stale_error(run.info.artifact_uri)
    retry_locked(lambda: client.update_run(run_id, status="RUNNING"))


def _delete_stale_error(artifact_uri: str) -> None:
    """Removes the interruption's ``error/traceback.txt``: a continued run that finishes must not show one."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        get_artifact_repository(artifact_uri).delete_artifacts("error")
    except Exception as err:  # noqa: BLE001 - a store that cannot delete keeps it; the status still says FINISHED
        print(f"con2 run: could not remove the stale error/traceback.txt of the continued run ({err})", file=sys.stderr)


def retry_locked(call: Callable[[], T], attempts: int = 8, delay_s: float = 0.5) -> T:
    """Calls ``call``, retrying with backoff while SQLite says the database is locked.

    MLflow already waits 20 s for a SQLite lock (``busy_timeout``); this covers the rarer lock
    errors SQLite raises without waiting, when many sweep workers write to one store at once.
    """
    for attempt in range(attempts):
        try:
            return call()
        except Exception as err:  # noqa: BLE001 - re-raised unless it is a lock error
            if "database is locked" not in str(err) or attempt == attempts - 1:
                raise
            time.sleep(delay_s * 2**attempt)
    raise AssertionError("unreachable")
