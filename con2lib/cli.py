"""``con2``: run the training notebook from a params file, sweep a grid of runs, open the MLflow UI.

    con2 run params/quickstart.yaml -p epochs 5 -p seed 1
    con2 sweep params/sweeps/quickstart.yaml --workers 2
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

from con2lib.paths import project_root, resolve
from con2lib.serving import add_commands as add_serving_commands
from con2lib.sweep import add_commands as add_sweep_commands


def load_params(path: str | os.PathLike[str], overrides: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """Reads a params file (following ``extends:`` chains) and applies ``-p key value`` overrides.

    ``extends: presets/cpu.yaml`` (relative to the file, or to ``params/``) loads that file first;
    the extending file's keys win. Override values are parsed as YAML (``-p epochs 5`` is an int).
    """
    params = _read_yaml(Path(path), seen=set())
    for key, value in overrides or []:
        params[key] = _parse_yaml(value, f"-p {key} {value!r}")
    return params


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice (plain YAML keeps the last one, silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # merge keys (<<: *base) may be overridden: that is what they are for
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (line {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, what: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ValueError(f"{what} is not valid YAML: {' '.join(str(err).split())}") from err


def _read_yaml(path: Path, seen: set[Path]) -> dict[str, Any]:
    path = path if path.is_file() else resolve(path)
    if not path.is_file():
        raise ValueError(f"params file {path} does not exist")
    if path.resolve() in seen:
        raise ValueError(f"params file {path} extends itself (cycle)")
    seen.add(path.resolve())
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"params file {path} is not UTF-8 text ({err.reason} at byte {err.start}); "
                         "save it as UTF-8") from err
    except OSError as err:
        raise ValueError(f"params file {path} cannot be read ({err.strerror or err})") from err
    data = _parse_yaml(text, f"params file {path}") or {}
    if not isinstance(data, dict):
        raise ValueError(f"params file {path} must hold a mapping of parameter: value")
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ValueError(f"params file {path}: extends={base!r} is invalid: expected one file name, "
                         "e.g. extends: presets/cpu.yaml")
    candidates = [path.parent / base, project_root() / "params" / base]
    base_path = next((p for p in candidates if p.is_file()), candidates[0])
    return {**_read_yaml(base_path, seen), **data}


def cmd_run(args: argparse.Namespace) -> int:
    """Validates the parameters, then executes the training notebook with papermill.

    Returns:
        0 when the run finished; 2 when it did not start (bad parameter, unwritable store: one line
        on stderr, no MLflow run created); 1 when it failed; 130 when it was interrupted.
    """
    from con2lib.runner import RunNotStarted, execute_run

    try:
        params = load_params(args.params, args.p)
    except ValueError as err:
        print(f"con2 run: {err}", file=sys.stderr)
        return 2
    from con2lib import distributed

    if distributed.is_worker():  # a torchrun rank > 0: trains alongside rank 0's run (docs/sweeps.md, Multi-GPU)
        return distributed.worker_main(str(params.get("device", "auto")))
    try:
        _, status = execute_run(params, notebook=args.notebook, output=args.output, quiet=args.quiet,
                                tags={"con2.params_file": str(args.params)}, kernel=args.kernel)
    except RunNotStarted as err:  # a bad parameter or an unwritable store: nothing was created
        print(f"con2 run: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the run was ended KILLED and reported
        return 130
    return 0 if status == "FINISHED" else 1


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
    add_serving_commands(sub)
    add_sweep_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``con2`` console command."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
