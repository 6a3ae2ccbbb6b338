"""S_LH covariance shrinkage, measured on trained runs without training again.

    python -m benchmarks.shrinkage --experiment oneclass-fashionmnist-cpu --values 0 0.01 0.1 0.3 1

For every FINISHED training run of the experiment: loads its checkpoint, rebuilds its split (the
training bank without the calibration images, as the run scored), extracts the features of the
un-augmented views (x and each context copy) and prints the S_LH AUROC for each shrinkage l of
Sigma_l = (1 - l) Sigma + l tr(Sigma)/D I, with S_NND on the same features beside it, per run and
averaged over runs.

Choosing a shrinkage is choosing a default: only runs scored on a validation split (``eval_split:
validation``, e.g. ``python -m benchmarks.oneclass --split validation``) are used, unless
``--split test`` asks to re-score test-split runs for a report.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

from con2lib.config import Config
from con2lib.data import load_dataset
from con2lib.method.checkpoint import load_checkpoint
from con2lib.method.evaluate import auroc, extract_features
from con2lib.method.models import build_model
from con2lib.method.scores import GaussianScorer, nnd_score_views
from con2lib.method.views import tta_views
from con2lib.serving.calibration import split_calibration


def shrinkage_aurocs(cfg: Config, state: dict, values: list[float]) -> tuple[float, list[float]]:
    """(S_NND AUROC, [S_LH AUROC per shrinkage]) on the un-augmented views of one trained model."""
    data, _ = split_calibration(load_dataset(cfg), cfg.calibration_fraction, cfg.split_seed)
    model = build_model(cfg, data.train.shape[1])
    model.load_state_dict(state["model"])
    identity = cfg.replace(tta=0, tta_identity=True)  # one un-augmented view per context
    views = tta_views(identity)
    device = torch.device("cpu")
    train = extract_features(model.encoder, data.train, views, identity, device)
    test = extract_features(model.encoder, data.test, views, identity, device)
    labels = data.test_labels.numpy()
    nnd = nnd_score_views(test, train)
    lh = [auroc(labels, GaussianScorer(value).fit(train).score(test).mean(0)) for value in values]
    return auroc(labels, nnd), lh


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--values", nargs="+", type=float, default=[0.0, 0.01, 0.1, 0.3, 1.0])
    parser.add_argument("--split", choices=("validation", "test"), default="validation",
                        help="use the runs scored on this split (validation to choose, test to report)")
    parser.add_argument("--max-runs", type=int, default=0, help="only the first N runs (0 = all)")
    args = parser.parse_args(argv)

    from mlflow.tracking import MlflowClient

    from con2lib.runs import tracking

    client = MlflowClient(tracking.tracking_uri())
    exp = client.get_experiment_by_name(args.experiment)
    if exp is None:
        print(f"error: no experiment {args.experiment!r} in {tracking.tracking_uri()}")
        return 2
    runs = [r for r in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'",
                                          order_by=["attributes.start_time ASC"], max_results=1000)
            if "auroc_nnd" in r.data.metrics and r.data.params.get("eval_split", "test") == args.split]
    if not runs:
        print(f"error: no finished {args.split}-split run in experiment {args.experiment!r} "
              f"(validation runs: python -m benchmarks.oneclass --split validation)")
        return 2
    runs = runs[:args.max_runs] if args.max_runs else runs
    print("run | class | context | S_NND | " + " | ".join(f"S_LH l={v:g}" for v in args.values))
    rows = []
    for run in runs:
        path = client.download_artifacts(run.info.run_id, "checkpoint/checkpoint.pt", tempfile.mkdtemp())
        state = load_checkpoint(path)
        cfg = Config.from_params(state["config"])
        nnd, lh = shrinkage_aurocs(cfg, state, args.values)
        rows.append([nnd, *lh])
        print(f"{run.info.run_id[:8]} | {cfg.normal_class} | {cfg.context} | {100 * nnd:.1f} | "
              + " | ".join(f"{100 * a:.1f}" for a in lh), flush=True)
    if rows:
        means = [100 * statistics.mean(col) for col in zip(*rows)]
        print(f"mean over {len(rows)} runs | | | {means[0]:.2f} | " + " | ".join(f"{m:.2f}" for m in means[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
