"""One training run: validate, create (or resume) the MLflow run, execute the notebook (papermill), record the end.

``con2 run`` and every point of ``con2 sweep`` (local workers and Slurm array tasks alike) go through
:func:`execute_run`, so a run started either way fails, is interrupted and is logged the same way
(docs/troubleshooting.md). A run that was interrupted (killed, or its process died) continues when it
is started again with the same parameters: :func:`con2lib.runs.resume.find_resumable` (docs/sweeps.md, "Resume").

    python -m con2lib.runs.runner <task.json>   # one point of a sweep (a local worker of con2lib.sweeps.backends)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from con2lib.config import Config
from con2lib.paths import project_root, resolve
from con2lib.runs.progress import StreamEcho, known_parameters, notebook_html
from con2lib.runs.resume import TAG_PARENT, TAG_RESUME_KEY, TAG_RESUMED, find_resumable, reopen, retry_locked
from con2lib.runs.run_files import RunBusy, atomic_notebook_path
from con2lib.runs.run_info import TAG_DESCRIPTION, auroc_summary, description, run_name, source_tags
from con2lib.runs.store import brief_store_errors, check_text, one_line



class RunNotStarted(ValueError):
    """The run could not start (bad parameter, unwritable store): nothing was created in MLflow."""


def prepare(params: dict[str, Any]) -> tuple[Config, str]:
    """Validates the parameters and the store; returns the config and the experiment id.

    Raises:
        RunNotStarted: a bad parameter, a device that does not exist here, or a store that cannot be
            written; the message is one line naming the problem.
    """
    from mlflow.exceptions import MlflowException

    from con2lib.runs import tracking

    try:
        cfg = Config.from_params(params)
        check_text(cfg.to_dict())  # before the store sees a run name or an experiment it cannot hold
        _check_device(cfg.device)
        return cfg, tracking.setup(cfg.experiment)
    except (ValueError, MlflowException) as err:
        raise RunNotStarted(str(err)) from err


def execute_run(params: dict[str, Any], notebook: str | os.PathLike[str] = "notebooks/train.ipynb",
                output: str | os.PathLike[str] | None = None, quiet: bool = True,
                tags: dict[str, str] | None = None, kernel: str | None = None,
                mark_dead: bool = True) -> tuple[str, str]:
    """Executes one run of the training notebook and makes sure it never stays RUNNING.

    Args:
        params: flat parameters (a loaded params file plus overrides).
        notebook: the notebook to execute (relative paths: to the project root).
        output: where the executed notebook goes (default ``runs/<run id>/train.ipynb``).
        quiet: echo only the notebook's progress lines (epoch, loss, ETA), not all of its output.
        tags: extra tags of the MLflow run (sweep id, point, parent run).
        kernel: Jupyter kernel name (default: the notebook's).
        mark_dead: first end as FAILED the runs of this host whose process died (a sweep does this
            once, in its parent process, instead of once per point).

    A run of the same parameters (and parent run) that was interrupted and left a training checkpoint
    is continued instead of creating a new one (:func:`con2lib.runs.resume.find_resumable`).

    Returns:
        ``(run_id, status)``; status is FINISHED, FAILED or KILLED.

    Raises:
        RunNotStarted: see :func:`prepare`; no MLflow run exists.
        KeyboardInterrupt: Ctrl-C, SIGTERM or SIGHUP; raised again after the run was ended KILLED.
    """
    from mlflow.tracking import MlflowClient

    from con2lib.runs import tracking

    print("con2 run: checking the parameters and the tracking store", flush=True)  # MLflow takes seconds to open
    cfg, experiment_id = prepare(params)
    if mark_dead:
        for dead in tracking.mark_dead_runs_failed():
            print(f"con2 run: run {dead} was left RUNNING by a process that died; marked FAILED", file=sys.stderr)
    from con2lib.method.checkpoint import config_key

    client = MlflowClient()
    run_tags = {tracking.TAG_PID: str(os.getpid()), tracking.TAG_HOST: socket.gethostname(),
                TAG_RESUME_KEY: config_key(cfg.to_dict()), **(tags or {})}
    try:
        found = find_resumable(client, experiment_id, run_tags[TAG_RESUME_KEY], run_tags.get(TAG_PARENT, ""))
    except RunBusy as busy:  # the same command started twice: the other start continues the run
        raise RunNotStarted(str(busy)) from busy
    claim = None
    if found is not None:
        run_id, epoch, claim = found
        reopen(client, run_id, {**run_tags, TAG_RESUMED: str(epoch)})
        print(f"con2 run: continuing MLflow run {run_id} from its checkpoint of epoch {epoch}", flush=True)
    else:
        run_tags.update(source_tags(project_root()))
        run = retry_locked(lambda: client.create_run(experiment_id, run_name=cfg.run_name or run_name(cfg),
                                                     tags=run_tags))
        run_id = run.info.run_id
    out = Path(output) if output else tracking.run_dir(run_id) / "train.ipynb"
    error: BaseException | None = None
    restore = interrupt_on_termination()
    try:  # from here on the run exists: whatever happens, it must not stay RUNNING
        import papermill

        out.parent.mkdir(parents=True, exist_ok=True)
        print(f"con2 run: MLflow run {run_id} (experiment {cfg.experiment!r}), notebook -> {out}\n"
              "con2 run: starting the notebook's kernel", flush=True)
        # stdout_file: the notebook's output reaches the terminal as it is written (all of it, or the
        # progress lines when quiet); coalesce_streams: the notebook keeps each bar's last state only
        with known_parameters(cfg.to_dict()):
            papermill.execute_notebook(
                str(resolve(notebook)), atomic_notebook_path(out), parameters={**params, "run_id": run_id},
                cwd=str(project_root()), progress_bar=False, kernel_name=kernel,
                stdout_file=StreamEcho(sys.stdout, everything=not quiet), coalesce_streams=True,
            )
    except BaseException as err:  # noqa: BLE001 - KeyboardInterrupt too
        error = err
    finally:
        restore()
    try:
        status = _finish(client, run_id, out, error, cfg)
    finally:
        if claim is not None:
            claim.release()
    if isinstance(error, KeyboardInterrupt):
        raise error
    return run_id, status


def _finish(client: Any, run_id: str, out: Path, error: BaseException | None, cfg: Config) -> str:
    """Ends the run (unless the notebook did), logs the executed notebook, reports; returns the status.

    A store that cannot record the end (a full disk, a server gone) is said in one line; the run then
    stays RUNNING until the next start marks it FAILED (and continues it from its checkpoint).
    """
    try:
        return _end(client, run_id, out, error, cfg)
    except Exception as err:  # noqa: BLE001 - MLflow's own traceback would hide what happened
        why = f" after {_summary(error)}" if error is not None else ""
        print(f"con2 run: FAILED: the tracking store could not record the end of MLflow run {run_id}{why}: "
              f"{one_line(_summary(err))} (a full disk? the next start marks it FAILED)",
              file=sys.stderr, flush=True)
        return "FAILED"


def _end(client: Any, run_id: str, out: Path, error: BaseException | None, cfg: Config) -> str:
    import mlflow

    from con2lib.runs import tracking

    status = client.get_run(run_id).info.status
    try:  # a description is a convenience: it must not hide how the run ended
        client.set_tag(run_id, TAG_DESCRIPTION, description(cfg, client.get_run(run_id).data.metrics))
    except Exception as err:  # noqa: BLE001
        print(f"con2 run: could not set the description of run {run_id}: {one_line(err)}", file=sys.stderr)
    if error is None:
        _log_notebook(client, run_id, out)
        if status == "RUNNING":
            client.set_terminated(run_id, "FINISHED")
            status = "FINISHED"
        shown = auroc_summary(client.get_run(run_id).data.metrics)
        print(f"con2 run: finished{': ' + shown if shown else ''}; open it with `make ui` "
              f"({mlflow.get_tracking_uri()}); model runs:/{run_id}/model", flush=True)
        return status
    ending = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
    summary = _summary(error)
    if status == "RUNNING":  # the kernel could not record it: interrupted, killed, or never started
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        tracking.record_failure(run_id, summary, text)
        client.set_terminated(run_id, ending)
    else:  # the notebook ended it (FAILED, or KILLED when the kernel itself was interrupted)
        ending = status
    _log_notebook(client, run_id, out)
    try:
        logged = ", ".join(sorted(f"{a.path}/" for a in client.list_artifacts(run_id) if a.is_dir)) or "none"
    except Exception:  # noqa: BLE001 - only a hint
        logged = "unknown"
    print(f"con2 run: {ending}: {summary}\n"
          f"  MLflow run {run_id}: tag {tracking.TAG_FAILURE}, artifacts {logged}\n"
          f"  executed notebook (up to the failing cell): {out}", file=sys.stderr, flush=True)
    return ending


def _log_notebook(client: Any, run_id: str, out: Path) -> None:
    """Logs the executed notebook, and as HTML next to it (the artifact viewer shows HTML, not .ipynb)."""
    if not out.is_file():
        return
    print("con2 run: logging the executed notebook (notebook/train.ipynb and .html)", flush=True)
    try:
        client.log_artifact(run_id, str(out), artifact_path="notebook")
        client.log_artifact(run_id, str(notebook_html(out)), artifact_path="notebook")
    except Exception as err:  # noqa: BLE001 - a full disk must not hide how the run ended
        print(f"con2 run: could not log the executed notebook {out}: {one_line(err)}", file=sys.stderr)


def _check_device(name: str) -> None:
    """Fails now, not inside the kernel, when an explicit device does not exist here."""
    if name in ("cuda", "mps"):
        from con2lib.method.device import select_device

        select_device(name)


def interrupt_on_termination() -> Callable[[], Any]:
    """Turns SIGTERM and SIGHUP into KeyboardInterrupt, so a terminated run ends KILLED; returns the undo."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"terminated by signal {signal.Signals(signum).name}")

    names = [name for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    try:
        previous = {name: signal.signal(getattr(signal, name), interrupt) for name in names}
    except ValueError:  # not the main thread: signals cannot be handled here
        return lambda: None
    return lambda: [signal.signal(getattr(signal, name), handler) for name, handler in previous.items()]


def _summary(error: BaseException) -> str:
    from con2lib.runs.tracking import describe

    ename, evalue = getattr(error, "ename", None), getattr(error, "evalue", None)
    if ename:
        return f"{ename}: {evalue}" if evalue else ename
    return describe(error)


# --- a point of a sweep ---------------------------------------------------------------------------------

def run_point(task: dict[str, Any]) -> tuple[str, str]:
    """Executes one point (in a local worker or a Slurm array task); returns ``(run_id, status)``."""
    os.environ.update(task.get("env", {}))
    params = dict(task["params"])
    if task.get("gpu") and params.get("device", "auto") == "auto":
        params["device"] = "cuda"  # the worker or job sees only its own GPU(s) (CUDA_VISIBLE_DEVICES)
    with brief_store_errors():  # a full disk is one line, not MLflow's traceback per call
        return execute_run(params, notebook=task["notebook"], quiet=True, tags=task["tags"], mark_dead=False)


def _die_with_parent(parent_pid: int | None) -> None:
    """Asks Linux to SIGTERM this worker when the sweep dies, so a killed sweep leaves no orphan runs."""
    if not parent_pid or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the sweep died before the request was in place
        sys.exit(130)


def main(argv: list[str] | None = None) -> int:
    """A sweep's local worker: runs the task file's point, writes its outcome next to it."""
    task = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    interrupt_on_termination()  # SIGTERM (the sweep stopping, or dying) ends the run KILLED, not silently
    _die_with_parent(task.get("parent_pid"))
    try:
        _, outcome = run_point(task)
    except RunNotStarted as err:
        outcome = f"did not start: {err}"
    except KeyboardInterrupt:
        return 130
    Path(task["result"]).write_text(json.dumps({"outcome": outcome}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
