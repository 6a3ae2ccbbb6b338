"""``con2``: run the training notebook from a params file, sweep a grid of runs, open the MLflow UI.

    con2 run params/quickstart.yaml -p epochs 5 -p seed 1
    con2 sweep params/sweeps/quickstart.yaml --workers 2
    con2 ui
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from con2lib.paramfiles import load_params
from con2lib.serving.commands import add_commands as add_serving_commands
from con2lib.sweeps.commands import add_commands as add_sweep_commands

__all__ = ["build_parser", "load_params", "main"]


def cmd_run(args: argparse.Namespace) -> int:
    """Validates the parameters, then executes the training notebook with papermill.

    Returns:
        0 when the run finished; 2 when it did not start (bad parameter, unwritable store: one line
        on stderr, no MLflow run created); 1 when it failed; 130 when it was interrupted.
    """
    from con2lib.runs.runner import RunNotStarted, execute_run

    try:
        params = load_params(args.params, args.p)
    except ValueError as err:
        print(f"con2 run: {err}", file=sys.stderr)
        return 2
    from con2lib.method import distributed

    if distributed.is_worker():  # a torchrun rank > 0: trains alongside rank 0's run (docs/sweeps.md, Multi-GPU)
        from con2lib.runs.ddp_worker import worker_main

        return worker_main(str(params.get("device", "auto")))
    from con2lib.runs.store import brief_store_errors

    try:
        with brief_store_errors():  # a full disk is one line, not MLflow's traceback per call
            _, status = execute_run(params, notebook=args.notebook, output=args.output, quiet=args.quiet,
                                    tags={"con2.params_file": str(args.params)}, kernel=args.kernel)
    except RunNotStarted as err:  # a bad parameter or an unwritable store: nothing was created
        print(f"con2 run: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the run was ended KILLED and reported
        return 130
    return 0 if status == "FINISHED" else 1


def cmd_ui(args: argparse.Namespace) -> int:
    """Serves the MLflow UI for the project's store on 127.0.0.1 (use --host to expose it).

    Prints the link of each experiment con2 created (the latest ten) that opens its runs table with the
    AUROC columns: MLflow's own first page of an experiment is an empty GenAI overview (con2lib.runs.mlflow_ui).
    """
    from con2lib.runs import tracking
    from con2lib.runs.mlflow_ui import ui_command, ui_url
    from con2lib.runs.store import KIND_TAG, KIND_TRAINING

    uri, base = tracking.tracking_uri(), f"http://{args.host}:{args.port}"
    print(f"MLflow UI on {base} for {uri}")
    if not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).is_file():
        from mlflow.tracking import MlflowClient

        found = [e for e in MlflowClient(uri).search_experiments(order_by=["creation_time DESC"], max_results=100)
                 if e.tags.get(KIND_TAG) == KIND_TRAINING][:10]
        if found:
            print("runs with their AUROCs (the toggle at the top left: Model training, not GenAI):")
        for experiment in found:
            print(f"  {experiment.name}: {ui_url(base, experiment.experiment_id)}")
    return subprocess.call(ui_command(uri, tracking.artifact_root(), args.host, args.port))


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
    run.add_argument("--quiet", action="store_true", help="echo only the progress lines, not all notebook output")
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
