"""``con2 score`` and ``con2 register``: use a trained run's MLflow model on new images.

    con2 score --model runs:/<run id>/model scans/ more.png --out scores.csv
    con2 register <run id> --name chest-xray          # alias "champion"
    con2 score --model models:/chest-xray@champion scans/ --out scores.csv

Both talk to the project's tracking store (``MLFLOW_TRACKING_URI`` or ``mlruns/``), as ``con2 run`` does.
The model is the pyfunc logged by the training notebook (:mod:`con2lib.serving.pyfunc_model`); ``mlflow models
serve`` serves the same model over HTTP (docs/scoring.md).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

COLUMNS = ("path", "score", "score_nnd", "score_lh", "anomaly", "nearest_index", "nearest_train", "error")
_LISTED = 20  # unreadable files named on stderr; all of them are rows of the CSV


def add_commands(sub: Any) -> None:
    """Adds ``score`` and ``register`` to the ``con2`` subcommands (``argparse`` subparsers)."""
    score = sub.add_parser("score", help="score image files or folders with a logged model; writes a CSV")
    score.add_argument("images", nargs="+", help="image files and folders (searched recursively)")
    score.add_argument("--model", required=True,
                       help="model URI: runs:/<run id>/model, models:/<name>@<alias>, models:/<name>/<version>")
    score.add_argument("--out", default="scores.csv", help="CSV to write (default scores.csv; - for stdout)")
    score.add_argument("--score", choices=("nnd", "lh"), help="score to decide on (default: the model's, nnd)")
    score.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    score.add_argument("--batch-size", type=int, default=256, help="images decoded and scored at a time")
    score.set_defaults(func=cmd_score)
    register = sub.add_parser("register", help="register a run's model in the MLflow model registry")
    register.add_argument("run_id", help="the training run's id")
    register.add_argument("--name", required=True, help="registered model name (created if new)")
    register.add_argument("--alias", default="champion", help="alias set on the new version (default champion)")
    register.set_defaults(func=cmd_register)


def collect_images(args: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files named by the arguments; folders are walked recursively for image files.

    Returns:
        The files in argument order (each folder's sorted), and ``(argument, problem)`` for arguments
        that name nothing usable (reported as error rows, not fatal).
    """
    from con2lib.data.images import list_images

    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found = list_images(path)
            files += found
            if not found:
                problems.append((arg, _no_images(path)))
        elif path.is_file():
            files.append(path)  # named explicitly: tried whatever its extension
        else:
            problems.append((arg, "no such file or folder"))
    return files, problems


def cmd_score(args: argparse.Namespace) -> int:
    """Scores images with a logged model and writes one CSV row per image.

    Returns:
        0 when at least one image was scored; 1 when none could be; 2 when the model could not be loaded.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    import pandas as pd
    from tqdm.auto import tqdm

    from con2lib.runs import tracking

    if args.batch_size < 1:
        print(f"con2 score: --batch-size {args.batch_size} is invalid: expected an integer > 0", file=sys.stderr)
        return 2
    problem = _output_problem(args.out)
    if problem:  # said now: scoring every image first would lose the work
        print(f"con2 score: --out {args.out} {problem}; nothing was scored", file=sys.stderr)
        return 2
    mlflow.set_tracking_uri(tracking.tracking_uri())
    files, problems = collect_images(args.images)
    overrides = {"device": args.device, **({"score": args.score} if args.score else {})}
    try:
        model = mlflow.pyfunc.load_model(args.model, model_config=overrides)
    except Exception as err:  # noqa: BLE001 - bad URI, missing run or model, no threshold: one line
        print(f"con2 score: cannot load model {args.model!r}: {_first_line(err)}", file=sys.stderr)
        return 2
    inner = model.unwrap_python_model()
    parts = [pd.DataFrame({"path": [p for p, _ in problems], "error": [why for _, why in problems]})]
    with tqdm(total=len(files), desc="scoring", unit="img", file=sys.stderr) as bar:
        for start in range(0, len(files), args.batch_size):
            chunk = files[start:start + args.batch_size]
            # the model opens no files (con2lib.serving.model_inputs): this command reads them and passes their bytes
            read = [_read_file(p) for p in chunk]
            table = model.predict(pd.DataFrame({"image": [data for data, _ in read]}))
            unread = [i for i, (_, why) in enumerate(read) if why]
            table.loc[unread, "error"] = [read[i][1] for i in unread]
            table.insert(0, "path", [str(p) for p in chunk])
            parts.append(table)
            bar.update(len(chunk))
    # argparse guarantees one argument at least, so there is a file or a problem row to concatenate
    table = pd.concat([p for p in parts if len(p)], ignore_index=True).reindex(columns=list(COLUMNS))
    table["error"] = table["error"].fillna("")
    table["nearest_train"] = table["nearest_train"].fillna("")
    table["nearest_index"] = table["nearest_index"].fillna(-1).astype("int64")
    table["anomaly"] = table["anomaly"].astype("boolean")  # empty where not scored: unknown, not "normal"
    table.to_csv(sys.stdout if args.out == "-" else args.out, index=False)
    failed = table[table["error"] != ""]
    scored = len(table) - len(failed)
    if len(failed):
        listed = "\n  ".join(f"{r.path}: {r.error}" for r in failed.head(_LISTED).itertuples())
        more = f"\n  ... and {len(failed) - _LISTED} more" if len(failed) > _LISTED else ""
        print(f"con2 score: {len(failed)} image(s) could not be scored (rows with an error in {args.out}):\n"
              f"  {listed}{more}", file=sys.stderr)
    warning = inner.model.calibration_warning()
    if warning:
        print(f"con2 score: warning: {warning}", file=sys.stderr)
    threshold = inner.model.thresholds[inner.score_name]
    print(f"con2 score: {scored} image(s) scored, {int(table['anomaly'].sum())} anomalous (S_{inner.score_name.upper()}"
          f" > {threshold:.6g}; {inner.model.threshold_source}) -> {args.out}", file=sys.stderr)
    return 0 if scored else 1


def cmd_register(args: argparse.Namespace) -> int:
    """Registers ``runs:/<run id>/model`` under ``--name`` and points ``--alias`` at the new version.

    Returns:
        0 when registered; 2 when the run or its model does not exist, or the registry refused.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    from mlflow.tracking import MlflowClient

    from con2lib.runs import tracking

    mlflow.set_tracking_uri(tracking.tracking_uri())
    client = MlflowClient()
    uri = f"runs:/{args.run_id}/model"
    try:
        client.get_run(args.run_id)
    except Exception as err:  # noqa: BLE001 - unknown run id, unreachable store: one line
        print(f"con2 register: {_first_line(err)}", file=sys.stderr)
        return 2
    try:  # checked before the registry creates the name
        info = mlflow.models.get_model_info(uri)
    except Exception:  # noqa: BLE001 - MLflow says "failed to download MLmodel"; say what it means
        print(f"con2 register: run {args.run_id} has no model {uri} (a run logs it in its notebook's 'Threshold "
              "and model' cell: did the run finish?)", file=sys.stderr)
        return 2
    try:
        # the logged model's own URI (models:/m-...): registering runs:/<id>/model makes MLflow 3 warn that the
        # run "has no artifacts at artifact path 'model'" (they live with the logged model) and fall back to it
        version = mlflow.register_model(info.model_uri, args.name)
        client.set_registered_model_alias(args.name, args.alias, version.version)
    except Exception as err:  # noqa: BLE001 - a name or alias the registry refuses: one line
        print(f"con2 register: {_first_line(err)}", file=sys.stderr)
        return 2
    print(f"con2 register: run {args.run_id} -> {args.name} version {version.version}, alias {args.alias!r}\n"
          f"  score with: con2 score --model models:/{args.name}@{args.alias} <images or folders> --out scores.csv")
    return 0


def _output_problem(out: str) -> str | None:
    """Why the CSV ``out`` cannot be written (a folder, a missing or read-only folder), or None."""
    if out == "-":
        return None
    path = Path(out)
    if path.is_dir():
        return "is a folder: name a CSV file"
    try:
        if path.exists():
            with open(path, "a"):  # noqa: PTH123 - opened for writing, not truncated: nothing is lost yet
                pass
        else:
            fd, probe = tempfile.mkstemp(dir=path.parent, prefix=".con2-score-probe-")
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        return f"cannot be written ({err.strerror or err})"
    return None


def _no_images(folder: Path) -> str:
    """Why a folder gave no image file: what it holds instead (a few names), or that it is empty."""
    from con2lib.data.images import IMAGE_SUFFIXES

    # a few names say why; a tree of thousands of other files need not be walked to the end for that
    others = sorted(str(p.relative_to(folder)) for p in itertools.islice(folder.rglob("*"), 1000) if p.is_file())
    if not others:
        return "folder holds no files"
    names = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
    return (f"folder holds no image files: {names} {'is' if len(others) == 1 else 'are'} not an image "
            f"(image files end in {', '.join(sorted(IMAGE_SUFFIXES))}; hidden files are skipped)")


def _read_file(path: Path) -> tuple[bytes | None, str]:
    """The bytes of an image file, or ``(None, why not)``: a FIFO, device or folder is not read (it could block)."""
    from con2lib.data.listing import check_regular_file

    try:
        check_regular_file(path)
        return path.read_bytes(), ""
    except ValueError as err:
        return None, str(err)
    except OSError as err:
        return None, f"cannot be read ({err.strerror or err})"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")
