"""Does training help? S_NND / S_LH AUROC of the encoder as training goes on, on a validation split.

    python -m benchmarks.learning_curve params/presets/cpu.yaml -p dataset digits -p normal_class 8 \
        -p epochs 300 -p image_size 16 --every 25

Trains one configuration (``eval_split: validation`` unless ``-p eval_split test``) and scores the
encoder before training and every ``--every`` epochs with the run's own test-time views, next to
raw-pixel cosine 1-NN on the same split. A curve that falls from its start says the training
objective removes what separates normal from anomalous images on this data; one that rises says the
budget is what limits it. Scores in the middle of training are those of a model whose learning rate
has not yet annealed, so compare shapes, not single points, with shorter runs.
"""

from __future__ import annotations

import argparse

import torch
import yaml

from con2lib.config import Config
from con2lib.data import load_dataset
from con2lib.method.device import seed_everything, select_device
from con2lib.method.epochs import EpochStats
from con2lib.method.evaluate import evaluate
from con2lib.method.models import build_model
from con2lib.method.train import fit
from con2lib.paramfiles import load_params
from con2lib.paths import resolve
from con2lib.serving.calibration import split_calibration


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("params", help="a params file (a preset)")
    parser.add_argument("--every", type=int, default=10, help="epochs between evaluations")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"))
    args = parser.parse_args(argv)
    params = {**load_params(resolve(args.params)), "eval_split": "validation",
              **{k: yaml.safe_load(v) for k, v in args.p}}
    cfg = Config.from_params(params)
    seed_everything(cfg.seed)
    device = select_device(cfg.device)
    data, _ = split_calibration(load_dataset(cfg), cfg.calibration_fraction, cfg.split_seed)
    model = build_model(cfg, data.train.shape[1]).to(device)
    print(f"learning curve: {cfg.dataset} class {cfg.normal_class}, {cfg.context}, {cfg.eval_split} split, "
          f"{len(data.train)} training images")
    print("| epoch | loss_context | loss_content | S_NND | S_LH | pixel kNN |\n|---|---|---|---|---|---|")

    def report(stats: EpochStats | None, net: torch.nn.Module) -> None:
        if stats is not None and stats.epoch % args.every and stats.epoch != cfg.epochs:
            return
        result = evaluate(cfg, net.encoder, data, device)
        losses = f"{stats.loss_context:.3f} | {stats.loss_content:.3f}" if stats else "- | -"
        print(f"| {stats.epoch if stats else 0} | {losses} | {100 * result.auroc_nnd:.2f} | "
              f"{100 * result.auroc_lh:.2f} | {100 * result.auroc_pixel_knn:.2f} |", flush=True)

    report(None, model)
    fit(cfg, model, data.train.to(device), on_epoch=report, progress=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
