"""``con2``: run the training notebook from a params file, open the MLflow UI.

    con2 run params/quickstart.yaml -p epochs 5 -p seed 1
    con2 ui
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import yaml

from con2lib.config import Config
from con2lib.paths import project_root, resolve


def load_params(path: str | os.PathLike[str], overrides: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """Reads a params file (following ``extends:`` chains) and applies ``-p key value`` overrides.

    ``extends: presets/cpu.yaml`` (relative to the file, or to ``params/``) loads that file first;
    the extending file's keys win. Override values are parsed as YAML (``-p epochs 5`` is an int).
    """
    params = _read_yaml(Path(path), seen=set())
    for key, value in overrides or []:
        params[key] = _parse_yaml(value, f"-p {key} {value!r}")
    return params


def _parse_yaml(text: str, what: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{what} is not valid YAML: {' '.join(str(err).split())}") from err


def _read_yaml(path: Path, seen: set[Path]) -> dict[str, Any]:
    path = path if path.is_file() else resolve(path)
    if not path.is_file():
        raise ValueError(f"params file {path} does not exist")
    if path.resolve() in seen:
        raise ValueError(f"params file {path} extends itself (cycle)")
    seen.add(path.resolve())
    data = _parse_yaml(path.read_text(), f"params file {path}") or {}
    if not isinstance(data, dict):
        raise ValueError(f"params file {path} must hold a mapping of parameter: value")
    base = data.pop("extends", None)
    if base is None:
        return data
    candidates = [path.parent / base, project_root() / "params" / base]
    base_path = next((p for p in candidates if p.is_file()), candidates[0])
    return {**_read_yaml(base_path, seen), **data}


def cmd_run(args: argparse.Namespace) -> int:
    """Validates the parameters, then executes the training notebook with papermill.

    Returns:
        0 when the run finished; 2 when it did not start (bad parameter, unwritable store: one line
        on stderr, no MLflow run created); 1 when it failed; 130 when it was interrupted.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from con2lib import tracking

    try:
        params = load_params(args.params, args.p)
        cfg = Config.from_params(params)
        _check_device(cfg.device)
        experiment_id = tracking.setup(cfg.experiment)
    except (ValueError, MlflowException) as err:
        print(f"con2 run: {err}", file=sys.stderr)
        return 2
    for dead in tracking.mark_dead_runs_failed():
        print(f"con2 run: run {dead} was left RUNNING by a process that died; marked FAILED", file=sys.stderr)
    client = MlflowClient()
    run = client.create_run(experiment_id, run_name=cfg.run_name or None,
                            tags={tracking.TAG_PID: str(os.getpid()), tracking.TAG_HOST: _host(),
                                  "con2.params_file": str(args.params)})
    run_id = run.info.run_id
    out = Path(args.output) if args.output else tracking.run_dir(run_id) / "train.ipynb"
    error: BaseException | None = None
    restore = _interrupt_on_termination()
    try:  # from here on the run exists: whatever happens, it must not stay RUNNING
        import papermill

        out.parent.mkdir(parents=True, exist_ok=True)
        print(f"con2 run: MLflow run {run_id} (experiment {cfg.experiment!r}), notebook -> {out}")
        papermill.execute_notebook(
            str(resolve(args.notebook)), str(out), parameters={**params, "run_id": run_id},
            cwd=str(project_root()), progress_bar=False, log_output=not args.quiet, kernel_name=args.kernel,
        )
    except BaseException as err:  # noqa: BLE001 - KeyboardInterrupt too
        error = err
    finally:
        restore()
    return _finish(client, run_id, out, error)


def _finish(client: Any, run_id: str, out: Path, error: BaseException | None) -> int:
    """Ends the run (unless the notebook did), logs the executed notebook, reports; returns the exit code."""
    import mlflow

    from con2lib import tracking

    status = client.get_run(run_id).info.status
    if error is None:
        _log_notebook(client, run_id, out)
        if status == "RUNNING":
            client.set_terminated(run_id, "FINISHED")
        print(f"con2 run: finished; open it with `make ui` ({mlflow.get_tracking_uri()})")
        return 0
    interrupted = isinstance(error, KeyboardInterrupt)
    ending = "KILLED" if interrupted else "FAILED"
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
          f"  executed notebook (up to the failing cell): {out}", file=sys.stderr)
    return 130 if interrupted else 1


def _log_notebook(client: Any, run_id: str, out: Path) -> None:
    if not out.is_file():
        return
    try:
        client.log_artifact(run_id, str(out), artifact_path="notebook")
    except Exception as err:  # noqa: BLE001 - a full disk must not hide how the run ended
        print(f"con2 run: could not log the executed notebook {out}: {err}", file=sys.stderr)


def _check_device(name: str) -> None:
    """Fails now, not inside the kernel, when an explicit device does not exist here."""
    if name in ("cuda", "mps"):
        from con2lib.train import select_device

        select_device(name)


def _interrupt_on_termination() -> Any:
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
    from con2lib.tracking import describe

    ename, evalue = getattr(error, "ename", None), getattr(error, "evalue", None)
    if ename:
        return f"{ename}: {evalue}" if evalue else ename
    return describe(error)


def _host() -> str:
    import socket

    return socket.gethostname()


def cmd_ui(args: argparse.Namespace) -> int:
    """Serves the MLflow UI for the project's store on 127.0.0.1 (use --host to expose it)."""
    from con2lib import tracking

    uri = tracking.tracking_uri()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", args.host, "--port", str(args.port)]
    if uri.startswith("sqlite:///"):
        cmd += ["--default-artifact-root", tracking.artifact_root().as_uri()]
    print(f"MLflow UI on http://{args.host}:{args.port} for {uri}")
    return subprocess.call(cmd)


def build_parser() -> argparse.ArgumentParser:
    """The ``con2`` command line."""
    parser = argparse.ArgumentParser(prog="con2", description="CON2 anomaly detection")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train and evaluate from a params file (papermill + MLflow)")
    run.add_argument("params", help="YAML params file, e.g. params/quickstart.yaml")
    run.add_argument("-p", nargs=2, action="append", metavar=("KEY", "VALUE"), help="override a parameter")
    run.add_argument("--notebook", default="notebooks/train.ipynb", help="notebook to execute")
    run.add_argument("--output", help="executed notebook path (default runs/<run id>/train.ipynb)")
    run.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebook's)")
    run.add_argument("--quiet", action="store_true", help="do not echo the notebook's output")
    run.set_defaults(func=cmd_run)
    ui = sub.add_parser("ui", help="open the MLflow UI on the project's store")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``con2`` console command."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
