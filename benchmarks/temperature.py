"""Measures the AUROC of CON2 over temperatures (and any other parameter) without MLflow.

    python -m benchmarks.temperature --dataset digits --classes 1 8 9 --values 0.1 0.2 0.5 \
        -p epochs 40 -p image_size 16 -p width 0.25

Prints one row per value: S_NND and S_LH AUROC per class and their mean, and the seconds per run.
Use ``--param`` to sweep another parameter (e.g. ``--param lh_shrinkage``).
"""

from __future__ import annotations

import argparse
import time

import yaml

from con2lib.config import Config
from con2lib.data import load_dataset
from con2lib.evaluate import evaluate
from con2lib.train import build_model, fit, seed_everything, select_device


def run_once(cfg: Config) -> tuple[float, float, float]:
    """Trains and scores one configuration; returns (auroc_nnd, auroc_lh, seconds)."""
    start = time.perf_counter()
    seed_everything(cfg.seed)
    device = select_device(cfg.device)
    data = load_dataset(cfg)
    model = build_model(cfg, data.train.shape[1]).to(device)
    fit(cfg, model, data.train.to(device), progress=False)
    result = evaluate(cfg, model.encoder, data, device)
    return result.auroc_nnd, result.auroc_lh, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--classes", nargs="+", default=["0"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--param", default="temperature")
    parser.add_argument("--values", nargs="+", default=["0.1", "0.2", "0.5"])
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"))
    args = parser.parse_args()
    base = {"dataset": args.dataset, **{k: yaml.safe_load(v) for k, v in args.p}}
    print(f"{args.param:>12} | " + " | ".join(f"class {c} nnd/lh" for c in args.classes) + " | mean nnd | mean lh | s/run")
    for raw in args.values:
        value = yaml.safe_load(raw)
        nnd, lh, secs, cells = [], [], [], []
        for cls in args.classes:
            runs = [run_once(Config.from_params({**base, args.param: value, "normal_class": yaml.safe_load(cls),
                                                 "seed": seed})) for seed in args.seeds]
            a_n = sum(r[0] for r in runs) / len(runs)
            a_l = sum(r[1] for r in runs) / len(runs)
            nnd.append(a_n)
            lh.append(a_l)
            secs += [r[2] for r in runs]
            cells.append(f"{100 * a_n:5.1f}/{100 * a_l:5.1f}")
        print(f"{value!s:>12} | " + " | ".join(f"{c:>15}" for c in cells)
              + f" | {100 * sum(nnd) / len(nnd):8.2f} | {100 * sum(lh) / len(lh):7.2f} | {sum(secs) / len(secs):5.1f}",
              flush=True)


if __name__ == "__main__":
    main()
