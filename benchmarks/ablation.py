"""Ablation on a validation split: which setting makes CON2 fall below raw pixels, measured, not guessed.

    python -m benchmarks.ablation benchmarks/ablations/digits.yaml
    python -m benchmarks.ablation benchmarks/ablations/fashionmnist.yaml --classes 0 6 --seeds 0 1
    python -m benchmarks.ablation benchmarks/ablations/digits.yaml --param temperature --values 0.1 0.2 0.5

The file names a ``base`` params file (a preset), ``overrides`` for every point (``eval_split:
validation`` unless the file says otherwise: choose on validation, report on test) and ``variants``,
each a name and the parameters it changes (``--param NAME --values ...`` replaces them with one
variant per value of one parameter). Every (variant, class, seed) is trained and scored in
process, exactly as ``con2 run`` does (the calibration images held out, the same :func:`evaluate`),
without MLflow. Prints one markdown row per variant: S_NND and S_LH per class (mean over seeds),
their class means, the gap to raw-pixel cosine 1-NN on the same split, the worst class's gap, and the
the untrained encoder's S_NND (mean, and in how many classes training beat it), the
seconds per run, and the context signal (median over classes of the context term's gradient on the
encoder in the last epoch over the first: near 0 when the context task is solved and teaches
nothing more). Rows are printed as they finish; ``--out`` also writes the table to a file.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from con2lib.config import Config
from con2lib.data import load_dataset
from con2lib.method.device import seed_everything, select_device
from con2lib.method.evaluate import evaluate
from con2lib.method.models import build_model
from con2lib.method.train import fit
from con2lib.paramfiles import load_params
from con2lib.paths import resolve
from con2lib.serving.calibration import split_calibration


def run_once(cfg: Config) -> dict[str, float]:
    """Trains and scores one configuration as ``con2 run`` does; AUROCs in [0, 1] (``untrained``: S_NND of
    the encoder before training, scored the same way), the seconds taken, and
    ``signal``: the context term's gradient on the encoder in the last epoch over the first epoch's
    (:mod:`con2lib.method.learning_signal`; near 0 when the context task is solved and teaches nothing more)."""
    start = time.perf_counter()
    seed_everything(cfg.seed)
    device = select_device(cfg.device)
    data, _ = split_calibration(load_dataset(cfg), cfg.calibration_fraction, cfg.split_seed)
    model = build_model(cfg, data.train.shape[1]).to(device)
    untrained = evaluate(cfg, model.encoder, data, device).auroc_nnd  # does training help at all?
    history = fit(cfg, model, data.train.to(device), progress=False)
    result = evaluate(cfg, model.encoder, data, device)
    first = history[0].grad_context
    return {"nnd": result.auroc_nnd, "lh": result.auroc_lh, "pixel": result.auroc_pixel_knn,
            "seconds": time.perf_counter() - start, "signal": history[-1].grad_context / first if first > 0 else 0.0, "untrained": untrained}


def row(name: str, runs: dict[int, list[dict[str, float]]]) -> tuple[str, dict[str, float]]:
    """One markdown row of a variant from its runs per class; also its summary numbers."""
    keys = ("nnd", "lh", "pixel", "signal", "untrained")
    per_class = {c: {k: statistics.mean(r.get(k, math.nan) for r in rs) for k in keys} for c, rs in runs.items()}
    mean = {k: 100 * statistics.mean(v[k] for v in per_class.values()) for k in ("nnd", "lh", "pixel", "untrained")}
    helped = sum(v["nnd"] > v["untrained"] for v in per_class.values())
    worst = 100 * min(v["nnd"] - v["pixel"] for v in per_class.values())
    seconds = statistics.mean(r["seconds"] for rs in runs.values() for r in rs)
    signal = statistics.median(v["signal"] for v in per_class.values())
    cells = [f"{100 * v['nnd']:.1f} / {100 * v['lh']:.1f}" for v in per_class.values()]
    text = (f"| {name} | " + " | ".join(cells) + f" | **{mean['nnd']:.2f}** / {mean['lh']:.2f} | {mean['pixel']:.2f} "
            f"| {mean['nnd'] - mean['pixel']:+.2f} | {worst:+.2f} | {mean['untrained']:.2f} ({helped}/{len(per_class)}) "
            f"| {signal:.3f} | {seconds:.0f} |")
    return text, {**mean, "worst_gap": worst}


def variant_configs(spec_path: Path, classes: list[int] | None, seeds: list[int], extra: dict[str, Any],
                    only: list[str] | None = None) -> tuple[dict[str, Any], list[int], dict[str, dict[int, list[Config]]]]:
    """The validated configs of an ablation file: ``{variant: {class: [config per seed]}}``.

    ``extra`` overrides parameters of every point; its key ``variants`` (if any) replaces the file's.
    """
    spec = yaml.safe_load(spec_path.read_text())
    variants = extra.pop("variants", None) or {name: changes or {} for name, changes in spec["variants"].items()}
    base: dict[str, Any] = {**load_params(resolve(spec["base"])), "eval_split": "validation",
                            **spec.get("overrides", {}), **extra}
    classes = classes or spec.get("classes") or list(range(10))
    configs = {name: {c: [Config.from_params({**base, **changes, "normal_class": c, "seed": s}) for s in seeds]
                      for c in classes}
               for name, changes in variants.items() if not only or name in only}
    return base, classes, configs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", help="ablation file: base, overrides, variants (benchmarks/ablations/)")
    parser.add_argument("--classes", nargs="+", type=int, help="normal classes (default: the file's, else 0..9)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--only", nargs="+", help="run only these variants")
    parser.add_argument("--param", help="sweep this parameter instead of the file's variants")
    parser.add_argument("--values", nargs="+", default=[], help="the values of --param (YAML literals)")
    parser.add_argument("--out", help="also write the markdown table here")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="override a parameter for every variant")
    args = parser.parse_args(argv)

    extra = {k: yaml.safe_load(v) for k, v in args.p}
    if args.param:
        extra["variants"] = {f"{args.param}={v}": {args.param: yaml.safe_load(v)} for v in args.values}
    try:  # every configuration is validated before the first one trains
        base, classes, configs = variant_configs(resolve(args.spec), args.classes, args.seeds, extra, args.only)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    head = (f"ablation {args.spec}: {base['dataset']}, {base['eval_split']} split, classes {classes}, seeds {args.seeds}; "
            "cells S_NND / S_LH AUROC, gaps are S_NND minus raw-pixel cosine 1-NN on the same split")
    lines = [head, "", "| variant | " + " | ".join(f"class {c}" for c in classes)
             + " | mean S_NND / S_LH | pixel kNN | gap | worst class gap | untrained S_NND (classes helped) "
             "| context signal | s/run |",
             "|" + "---|" * (len(classes) + 8)]
    print("\n".join(lines), flush=True)
    for name, per_class in configs.items():
        text, _ = row(name, {c: [run_once(cfg) for cfg in cfgs] for c, cfgs in per_class.items()})
        lines.append(text)
        print(text, flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
