"""One-class benchmark: every requested (class, context, seed) trained and scored like ``con2 run``.

    python -m benchmarks.oneclass --dataset fashionmnist --preset cpu
    python -m benchmarks.oneclass --dataset fashionmnist --preset cpu --classes 0 6 --seeds 0 1 --contexts invert flip

The points are a ``con2 sweep`` grid (written to ``runs/oneclass/<dataset>-<preset>.yaml``: the preset
crossed with classes, contexts and seeds) run by the sweep's local backend (``--workers`` runs at once,
sharing the cores), so each point is one ``con2 run`` of ``notebooks/train.ipynb`` logged to the MLflow
experiment ``oneclass-<dataset>-<preset>``; points that FINISHED before are not trained again, so an
interrupted benchmark completes by running the same command again. Prints per class the AUROC (S_NND and S_LH, mean +- std
over seeds) per context, the un-augmented-pair scores (``_identity``: x and t_c(x), equal to ``tta: 2``),
a raw-pixel cosine kNN baseline on the same split and GEOM's published per-class figures, then the
means over classes, and as its last line, for the first context of ``--contexts``:

    mean_auroc_nnd=<x> mean_auroc_lh=<y> mean_auroc_pixel_knn=<p> minutes_per_run=<z>

``--split validation`` scores a validation split carved from the training split instead of the test
split (``eval_split: validation``): use it to choose, and the default test split to report.

The table is also written as markdown under ``runs/oneclass/`` and logged to a report run.
The offline Fashion-MNIST copy does not use the official split (../shared/data/README.md), so the
published anchors compare only approximately.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from con2lib.config import Config
from con2lib.data import load_dataset
from con2lib.method.evaluate import auroc
from con2lib.method.scores import pixel_knn_scores
from con2lib.paths import project_root
from con2lib.serving.calibration import split_calibration

# Published one-class Fashion-MNIST mean AUROC (official split): GEOM (Golan & El-Yaniv 2018),
# OC-SVM on raw pixels and Deep SAD without labels (Ruff et al. 2020).
ANCHORS = {"GEOM": 93.5, "OC-SVM (raw pixels)": 92.8, "Deep SAD (no labels)": 89.2}
GEOM_PER_CLASS = {"fashionmnist": (99.4, 97.6, 91.1, 89.9, 92.1, 93.4, 83.3, 98.9, 90.8, 99.2)}
METRICS = ("auroc_nnd", "auroc_lh", "auroc_nnd_identity", "auroc_lh_identity", "auroc_nnd_notta")


def experiment_name(args: argparse.Namespace, overrides: dict[str, Any]) -> str:
    """``oneclass-<dataset>-<preset>``, with ``-validation`` for validation-split points (kept apart from test figures)."""
    split = "-validation" if overrides.get("eval_split") == "validation" else ""
    return f"oneclass-{args.dataset}-{args.preset}{split}"


def write_grid(args: argparse.Namespace, overrides: dict[str, Any]) -> Path:
    """The benchmark as a ``con2 sweep`` grid file: the preset, crossed with classes, contexts and seeds."""
    import yaml

    from con2lib.runs.tracking import runs_root

    suffix = "".join(f"-{k}={v}" for k, v in sorted(overrides.items()))
    grid = {"base": str(project_root() / "params" / "presets" / f"{args.preset}.yaml"),
            "overrides": {"dataset": args.dataset, "experiment": experiment_name(args, overrides), **overrides},
            "grid": {"context": args.contexts, "normal_class": args.classes, "seed": args.seeds}}
    path = runs_root() / "oneclass" / f"{args.dataset}-{args.preset}{suffix}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def pixel_knn_auroc(params: dict[str, Any]) -> float:
    """Raw-pixel cosine kNN (k = 1) on the run's own split: the training bank without the calibration images.

    Runs log the same figure as ``auroc_pixel_knn``; this recomputes it for points without that metric."""
    cfg = Config.from_params(params)
    data, _ = split_calibration(load_dataset(cfg), cfg.calibration_fraction, cfg.split_seed)
    return auroc(data.test_labels, pixel_knn_scores(data.train, data.test))


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f}" + (f" +- {100 * std:.1f}" if len(values) > 1 else "")


def _values(results: dict[tuple[int, str, int], dict[str, Any]], cls: int, context: str, seeds: list[int],
            metric: str) -> list[float]:
    """The metric of every finished seed of one (class, context)."""
    return [results[cls, context, s][metric] for s in seeds if metric in results.get((cls, context, s), {})]


def class_mean(results: dict[tuple[int, str, int], dict[str, Any]], classes: list[int], context: str,
               seeds: list[int], metric: str) -> float | None:
    """Mean over classes of each class's mean over seeds (classes without a finished run left out); None if none."""
    per_class = [statistics.mean(v) for cls in classes if (v := _values(results, cls, context, seeds, metric))]
    return statistics.mean(per_class) if per_class else None


def table(results: dict[tuple[int, str, int], dict[str, Any]], classes: list[int], contexts: list[str],
          seeds: list[int], pixel: dict[int, float], geom: tuple[float, ...] | None) -> list[str]:
    """Markdown rows: per class S_NND / S_LH (8 views and the identity pair) per context, kNN, GEOM."""
    head = ["class"] + [f"{m.removeprefix('auroc_')} [{c}]" for c in contexts for m in METRICS[:4]] + ["pixel kNN", "GEOM"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cls in classes:
        cells = [str(cls)]
        for ctx in contexts:
            for m in METRICS[:4]:
                cells.append(_cell(_values(results, cls, ctx, seeds, m)))
        cells += [f"{100 * pixel[cls]:.1f}", f"{geom[cls]:.1f}" if geom and cls < len(geom) else "-"]
        rows.append("| " + " | ".join(cells) + " |")
    means = ["mean"]
    for ctx in contexts:
        for m in METRICS[:4]:
            mean = class_mean(results, classes, ctx, seeds, m)
            means.append(f"**{100 * mean:.2f}**" if mean is not None else "-")
    means += [f"{100 * statistics.mean(pixel[c] for c in classes):.2f}",
              f"{statistics.mean(geom[c] for c in classes):.2f}" if geom else "-"]
    rows.append("| " + " | ".join(means) + " |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashionmnist")
    parser.add_argument("--preset", default="cpu", help="params/presets/<name>.yaml")
    parser.add_argument("--classes", nargs="+", type=int, default=list(range(10)))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--contexts", nargs="+", default=["auto"],
                        help="contexts to cross (default: the preset's auto, chosen per class from its training images)")
    parser.add_argument("--split", choices=("test", "validation"), default="test",
                        help="score the test split (reporting) or a validation split carved from the training "
                             "split (choosing: the test split is not used)")
    parser.add_argument("--workers", type=int, default=1,
                        help="runs at once (con2 sweep's local backend; CPU workers share the cores)")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="override a preset parameter for every point (recorded in the run)")
    args = parser.parse_args(argv)

    import mlflow
    import yaml
    from mlflow.tracking import MlflowClient

    from con2lib.runs import tracking
    from con2lib.runs.runner import RunNotStarted
    from con2lib.sweeps import grid as sw
    from con2lib.sweeps.backends import LocalBackend, run_sweep

    overrides = {**({"eval_split": "validation"} if args.split == "validation" else {}),
                 **{k: yaml.safe_load(v) for k, v in args.p}}
    try:
        grid = write_grid(args, overrides)
        sweep = sw.load_sweep(grid)
        experiment = sweep.experiments()[0]
        run_sweep(sweep, LocalBackend(tracking.runs_root() / "sweeps" / sweep.sweep_id, args.workers))
    except (ValueError, RunNotStarted) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    client = MlflowClient()
    states = sw.point_states(sweep, sw.sweep_runs(client, sweep, [tracking.setup(experiment)]))
    results: dict[tuple[int, str, int], dict[str, Any]] = {}
    for point in sweep.points:
        state, run = states[point.key]
        if state == "done":
            minutes = (run.info.end_time - run.info.start_time) / 60000
            results[point.values["normal_class"], point.values["context"], point.values["seed"]] = {
                **run.data.metrics, "minutes": minutes}

    logged = {cls: r["auroc_pixel_knn"] for (cls, _, _), r in results.items() if "auroc_pixel_knn" in r}
    pixel = {cls: logged.get(cls) or pixel_knn_auroc(next(p.params for p in sweep.points
                                                          if p.values["normal_class"] == cls))
             for cls in args.classes}
    rows = table(results, args.classes, args.contexts, args.seeds, pixel, GEOM_PER_CLASS.get(args.dataset))
    anchors = ", ".join(f"{k} {v}" for k, v in ANCHORS.items()) if args.dataset == "fashionmnist" else "none"
    minutes = [r["minutes"] for r in results.values()]
    suffix = "".join(f", {k}={v}" for k, v in sorted(overrides.items()))
    lines = [f"oneclass {args.dataset}, preset {args.preset}{suffix}, seeds {args.seeds}, {args.workers} worker(s); "
             f"{len(results)}/{len(sweep.points)} runs finished; published mean AUROC anchors: {anchors}", "",
             *rows, ""]
    means = {}
    for metric in ("auroc_nnd", "auroc_lh"):
        mean = class_mean(results, args.classes, args.contexts[0], args.seeds, metric)
        means[metric] = 100 * mean if mean is not None else float("nan")
    summary = (f"mean_auroc_nnd={means['auroc_nnd']:.2f} mean_auroc_lh={means['auroc_lh']:.2f} "
               f"mean_auroc_pixel_knn={100 * statistics.mean(pixel[c] for c in args.classes):.2f} "
               f"minutes_per_run={statistics.mean(minutes) if minutes else float('nan'):.1f}")
    print("\n".join(lines))
    report = grid.with_suffix(".md")
    report.write_text("\n".join(lines + [summary]) + "\n")
    with mlflow.start_run(experiment_id=tracking.setup(experiment), run_name=f"oneclass report {sweep.sweep_id}",
                          tags={"report": "oneclass"}):
        mlflow.log_artifact(str(report))
        mlflow.log_metrics({f"mean_{k}": v / 100 for k, v in means.items() if v == v})  # 0..1 like the runs
    print(summary)
    return 0 if len(results) == len(sweep.points) else 1


if __name__ == "__main__":
    raise SystemExit(main())
