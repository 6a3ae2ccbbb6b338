"""``con2``: run the training notebook from a params file, open the MLflow UI.

    con2 run params/quickstart.yaml -p epochs 5 -p seed 1
    con2 ui
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
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
        params[key] = yaml.safe_load(value)
    return params


def _read_yaml(path: Path, seen: set[Path]) -> dict[str, Any]:
    path = path if path.is_file() else resolve(path)
    if not path.is_file():
        raise ValueError(f"params file {path} does not exist")
    if path.resolve() in seen:
        raise ValueError(f"params file {path} extends itself (cycle)")
    seen.add(path.resolve())
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"params file {path} must hold a mapping of parameter: value")
    base = data.pop("extends", None)
    if base is None:
        return data
    candidates = [path.parent / base, project_root() / "params" / base]
    base_path = next((p for p in candidates if p.is_file()), candidates[0])
    return {**_read_yaml(base_path, seen), **data}


def cmd_run(args: argparse.Namespace) -> int:
    """Validates the parameters, then executes the training notebook with papermill."""
    import mlflow
    import papermill
    from mlflow.tracking import MlflowClient

    from con2lib import tracking

    try:
        params = load_params(args.params, args.p)
        cfg = Config.from_params(params)
        experiment_id = tracking.setup(cfg.experiment)
    except ValueError as err:
        print(f"con2 run: {err}", file=sys.stderr)
        return 2
    client = MlflowClient()
    run = client.create_run(experiment_id, run_name=cfg.run_name or None,
                            tags={tracking.TAG_PID: str(os.getpid()), tracking.TAG_HOST: _host(),
                                  "con2.params_file": str(args.params)})
    run_id = run.info.run_id
    out = Path(args.output) if args.output else tracking.run_dir(run_id) / "train.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"con2 run: MLflow run {run_id} (experiment {cfg.experiment!r}), notebook -> {out}")
    error: BaseException | None = None
    try:
        papermill.execute_notebook(
            str(resolve(args.notebook)), str(out), parameters={**params, "run_id": run_id},
            cwd=str(project_root()), progress_bar=False, log_output=not args.quiet, kernel_name=args.kernel,
        )
    except BaseException as err:  # noqa: BLE001 - KeyboardInterrupt too: the run must not stay RUNNING
        error = err
    if out.is_file():
        client.log_artifact(run_id, str(out), artifact_path="notebook")
    status = client.get_run(run_id).info.status
    if error is None:
        if status == "RUNNING":
            client.set_terminated(run_id, "FINISHED")
        print(f"con2 run: finished; open it with `make ui` ({mlflow.get_tracking_uri()})")
        return 0
    if status == "RUNNING":
        client.set_tag(run_id, "con2.failure", _summary(error)[:5000])
        client.set_terminated(run_id, "FAILED")
    print(f"con2 run: FAILED: {_summary(error)}\n  executed notebook (up to the failing cell): {out}", file=sys.stderr)
    return 130 if isinstance(error, KeyboardInterrupt) else 1


def _summary(error: BaseException) -> str:
    ename, evalue = getattr(error, "ename", None), getattr(error, "evalue", None)
    return f"{ename}: {evalue}" if ename else f"{type(error).__name__}: {error}"


def _host() -> str:
    import socket

    return socket.gethostname()


def cmd_ui(args: argparse.Namespace) -> int:
    """Serves the MLflow UI for the project's store on 127.0.0.1 (use --host to expose it)."""
    from con2lib import tracking

    uri = tracking.tracking_uri()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)]
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
