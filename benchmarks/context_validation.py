"""Does the context check (con2lib.analysis.contexts.check) predict which context augmentation trains best?

    python -m benchmarks.context_validation --dataset digits --classes 0 1 2 3 4 5 6 7 8 9 \\
        --candidates invert flip equalize rot90 hflip \\
        -p epochs 15 -p image_size 16 -p width 0.25 -p batch_size 32

Per normal class: runs the check on the normal training images (as the run sees them, at
``image_size``), then trains and scores CON2 once per candidate in-process (``run_once`` of
benchmarks/ablation.py, S_NND AUROC on the validation split carved from the training split unless
``-p eval_split test``, averaged over ``--seeds``), and prints the check's ranking,
the AUROC per candidate, the Spearman correlation between check score and AUROC over the candidates,
and whether the check's pick (what ``context: auto`` would train) is the best-trained context.
``rho passing`` is the same correlation among the candidates that pass the check (score >= 0.5):
whether the check also orders the acceptable candidates, not only rejects the bad ones.
A summary compares the mean AUROC of the pick with the best, the default (invert) and a random pick;
the last line is ``rank_correlation=<mean over classes> auto_matches_best=<k>/<n> auto_within_1pt=<k>/<n>``
(the pick within 1 point of the best-trained candidate). Candidates may be lists of contexts
(``rot90,rot180,rot270``); ``tta`` is rounded up to a multiple of their number (``Config.with_context``).

``--aurocs OUTPUT ...`` re-runs only the check against the AUROCs printed in earlier outputs (after a
change of the check: seconds instead of an hour, and the same training results to compare with).
"""

from __future__ import annotations

import argparse
import math
import re
import time

import numpy as np
import yaml
from scipy.stats import spearmanr

from con2lib.analysis.contexts import check, recommend
from con2lib.config import Config
from con2lib.data import load_dataset

from benchmarks.ablation import run_once

PASS = 0.5  # check score above which a candidate counts as satisfying both assumptions (rho_pass)


def _rho(x: list[float], y: list[float]) -> float:
    """Spearman correlation; NaN when either side is constant (e.g. every candidate at 100 %)."""
    return float(spearmanr(x, y).statistic) if np.ptp(x) > 0 and np.ptp(y) > 0 else math.nan


def validate_class(base: dict, cls: object, candidates: list[str], seeds: list[int], max_images: int,
                   known: dict[str, float] | None = None, content_hflip: float | None = None) -> dict:
    """Check and train every candidate for one normal class; returns the per-class result.

    ``known``: AUROCs (0..1) per candidate from an earlier output: the check is run, training is not.
    ``content_hflip``: the check's; None = the runs' ``hflip_p``, as ``context: auto`` does.
    """
    cfg = Config.from_params({**base, "normal_class": cls})
    table = check(load_dataset(cfg).train, candidates, max_images=max_images, seed=cfg.seed,
                  content_hflip=cfg.hflip_p if content_hflip is None else content_hflip)
    auroc, secs = dict(known or {}), []
    for name in [c for c in candidates if c not in auroc]:
        runs = [run_once(cfg.with_context(name).replace(seed=s)) for s in seeds]
        auroc[name] = float(np.mean([r["nnd"] for r in runs]))
        secs += [r["seconds"] for r in runs]
    score = table.set_index("candidate")["score"]
    rho = _rho([score[c] for c in candidates], [auroc[c] for c in candidates])
    # the same among the candidates that pass both assumptions: does the check order them, too?
    passing = [c for c in candidates if score[c] >= PASS]
    rho_pass = _rho([score[c] for c in passing], [auroc[c] for c in passing]) if len(passing) > 2 else math.nan
    pick = recommend(table)
    best = max(auroc.values())
    return {"class": cls, "table": table, "auroc": auroc, "rho": rho, "rho_pass": rho_pass, "pick": pick,
            # ties count as a match: the pick is *a* best context
            "match": math.isclose(auroc[pick], best, abs_tol=1e-9), "best": best,
            "secs": float(np.mean(secs)) if secs else 0.0}


def read_aurocs(paths: list[str]) -> dict[str, dict[str, float]]:
    """Per class, the AUROC (0..1) of each candidate printed by earlier runs of this script."""
    out: dict[str, dict[str, float]] = {}
    for path in paths:
        for line in open(path):
            parts = [p.strip() for p in line.split("|")]
            if len(parts) > 3 and "=" in parts[2] and not parts[0].startswith("class"):
                out[parts[0]] = {k: float(v) / 100 for k, v in re.findall(r"([\w,+]+)=([\d.]+)", parts[2])}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--classes", nargs="+", default=[str(i) for i in range(10)])
    parser.add_argument("--candidates", nargs="+", default=["invert", "flip", "equalize", "rot90", "hflip"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--max-images", type=int, default=500)
    parser.add_argument("--aurocs", nargs="+", default=[], metavar="OUTPUT",
                        help="earlier outputs of this script: re-run only the check against their AUROCs")
    parser.add_argument("--content-hflip", type=float, default=None,
                        help="the check's content_hflip (default: the runs' hflip_p, as context: auto does)")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"))
    args = parser.parse_args()
    known = read_aurocs(args.aurocs)
    base = {"dataset": args.dataset, "eval_split": "validation", **{k: yaml.safe_load(v) for k, v in args.p}}
    start = time.perf_counter()
    print(f"{args.dataset}, candidates {' '.join(args.candidates)}, seeds {args.seeds}, params {dict(args.p)}, "
          f"check content_hflip {args.content_hflip}")
    print("class | check ranking (score) | S_NND AUROC % per candidate | rho | rho passing | pick -> AUROC (best) "
          "| match")
    results = []
    for raw in args.classes:
        r = validate_class(base, yaml.safe_load(raw), args.candidates, args.seeds, args.max_images, known.get(raw),
                           args.content_hflip)
        results.append(r)
        ranking = " > ".join(f"{c}({s:.2f})" for c, s in zip(r["table"]["candidate"], r["table"]["score"], strict=True))
        aurocs = " ".join(f"{c}={100 * a:.1f}" for c, a in r["auroc"].items())
        print(f"{r['class']} | {ranking} | {aurocs} | {r['rho']:+.2f} | {r['rho_pass']:+.2f} | {r['pick']} -> "
              f"{100 * r['auroc'][r['pick']]:.1f} ({100 * r['best']:.1f}) | {'yes' if r['match'] else 'no'}  "
              f"[{r['secs']:.0f} s/run]", flush=True)
    rhos = [r["rho"] for r in results if not math.isnan(r["rho"])]
    mean_rho = float(np.mean(rhos)) if rhos else math.nan
    rhos_pass = [r["rho_pass"] for r in results if not math.isnan(r["rho_pass"])]
    matches = sum(r["match"] for r in results)
    pick = np.mean([r["auroc"][r["pick"]] for r in results])
    best = np.mean([r["best"] for r in results])
    default = np.mean([r["auroc"].get("invert", math.nan) for r in results])
    random_pick = np.mean([np.mean(list(r["auroc"].values())) for r in results])
    chance = np.mean([sum(math.isclose(a, r["best"], abs_tol=1e-9) for a in r["auroc"].values()) / len(r["auroc"])
                      for r in results])
    print(f"mean S_NND AUROC %: check's pick {100 * pick:.2f}, best per class {100 * best:.2f}, "
          f"invert {100 * default:.2f}, random pick {100 * random_pick:.2f}; "
          f"a random pick matches the best {chance * len(results):.1f}/{len(results)} times on average; "
          f"rho defined for {len(rhos)}/{len(results)} classes; mean rho among passing candidates (score >= {PASS}) "
          f"{np.mean(rhos_pass) if rhos_pass else math.nan:+.3f} over {len(rhos_pass)} classes; "
          f"{time.perf_counter() - start:.0f} s in all")
    within = sum(r["best"] - r["auroc"][r["pick"]] <= 0.01 for r in results)
    print(f"rank_correlation={mean_rho:.3f} auto_matches_best={matches}/{len(results)} "
          f"auto_within_1pt={within}/{len(results)}")


if __name__ == "__main__":
    main()
