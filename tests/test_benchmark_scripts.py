"""The one-class benchmark's pieces that need no training: its grid, its baseline and its table."""

from __future__ import annotations

import argparse
import re

import pytest

from con2lib.config import Config
from con2lib.sweeps.grid import load_sweep

from benchmarks.oneclass import pixel_knn_auroc, table, write_grid
from conftest import TINY, make_experiment


def test_the_grid_is_the_preset_crossed_with_contexts_classes_and_seeds(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CON2_RUNS_DIR", str(tmp_path))
    args = argparse.Namespace(dataset="fashionmnist", preset="cpu", contexts=["invert", "flip"], classes=[0, 3],
                              seeds=[0, 1])
    sweep = load_sweep(write_grid(args, {"epochs": 1}))
    assert len(sweep.points) == 8
    assert {(p.values["context"], p.values["normal_class"], p.values["seed"]) for p in sweep.points} == {
        (c, k, s) for c in ("invert", "flip") for k in (0, 3) for s in (0, 1)}
    cfg = Config.from_params(sweep.points[0].params)
    assert (cfg.dataset, cfg.experiment, cfg.epochs, cfg.stem, cfg.width) == (
        "fashionmnist", "oneclass-fashionmnist-cpu", 1, "stride2", 0.25)


def test_pixel_knn_uses_the_split_the_run_scores() -> None:
    from sklearn.metrics import roc_auc_score
    from sklearn.neighbors import NearestNeighbors

    from con2lib.data import load_dataset
    from con2lib.serving.calibration import split_calibration

    params = {**TINY, "max_train": 0, "calibration_fraction": 0.2}
    cfg = Config.from_params(params)
    data, held_out = split_calibration(load_dataset(cfg), 0.2, cfg.split_seed)
    assert len(held_out) > 0
    knn = NearestNeighbors(n_neighbors=1, metric="cosine", algorithm="brute").fit(data.train.flatten(1).numpy())
    distance, _ = knn.kneighbors(data.test.flatten(1).numpy())
    expected = roc_auc_score(data.test_labels.numpy(), distance[:, 0])
    assert pixel_knn_auroc(params) == pytest.approx(expected, abs=1e-6)


def test_table_means_over_seeds_then_classes() -> None:
    results = {(0, "invert", 0): {"auroc_nnd": 0.90, "auroc_lh": 0.80},
               (0, "invert", 1): {"auroc_nnd": 0.94, "auroc_lh": 0.84},
               (1, "invert", 0): {"auroc_nnd": 0.70, "auroc_lh": 0.60}}
    rows = table(results, [0, 1], ["invert"], [0, 1], {0: 0.5, 1: 0.75}, (99.0, 98.0))
    cells = [r.split(" | ") for r in rows]
    assert cells[2][1] == "92.0 +- 2.8" and cells[3][1] == "70.0"
    assert cells[-1][1] == "**81.00**" and cells[-1][2] == "**71.00**"  # (92 + 70) / 2, (82 + 60) / 2
    assert cells[-1][3] == "-"  # no identity metric in these runs: a gap, not an error
    assert cells[-1][-2] == "62.50" and cells[-1][-1].startswith("98.50")


def test_table_shows_missing_points_as_gaps() -> None:
    rows = table({}, [0, 1, 2], ["flip"], [0], {i: 0.5 for i in range(3)}, None)
    assert len(rows) == 2 + 3 + 1
    assert rows[2].startswith("| 0 | - | - | - | - | 50.0 | - |")


def test_validation_points_go_to_their_own_experiment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CON2_RUNS_DIR", str(tmp_path))
    args = argparse.Namespace(dataset="digits", preset="cpu", contexts=["invert"], classes=[8], seeds=[0])
    [point] = load_sweep(write_grid(args, {"eval_split": "validation"})).points
    cfg = Config.from_params(point.params)
    assert cfg.eval_split == "validation" and cfg.experiment == "oneclass-digits-cpu-validation"


def test_every_run_logs_the_pixel_baseline_of_its_own_split() -> None:
    import torch

    from con2lib.data import load_dataset
    from con2lib.method.evaluate import evaluate
    from con2lib.method.models import build_model
    from con2lib.serving.calibration import split_calibration

    params = {**TINY, "eval_split": "validation", "max_train": 0, "max_test": 0}
    cfg = Config.from_params(params)
    data, _ = split_calibration(load_dataset(cfg), cfg.calibration_fraction, cfg.split_seed)
    result = evaluate(cfg, build_model(cfg, 1).encoder, data, torch.device("cpu"))
    assert result.auroc_pixel_knn == pytest.approx(pixel_knn_auroc(params), abs=1e-9)
    assert result.auroc_pixel_knn != pytest.approx(pixel_knn_auroc({**params, "eval_split": "test"}), abs=1e-4)


def test_ablation_row_reports_means_and_gaps_to_pixels() -> None:
    from benchmarks.ablation import row

    runs = {0: [{"nnd": 0.9, "lh": 0.8, "pixel": 0.95, "seconds": 1.0, "signal": 0.001, "untrained": 0.93},
                {"nnd": 0.94, "lh": 0.84, "pixel": 0.95, "seconds": 3.0, "signal": 0.003, "untrained": 0.93}],
            1: [{"nnd": 0.99, "lh": 0.9, "pixel": 0.97, "seconds": 2.0, "signal": 0.5, "untrained": 0.95}]}
    text, summary = row("v", runs)
    assert summary["nnd"] == pytest.approx(95.5) and summary["pixel"] == pytest.approx(96.0)
    assert summary["worst_gap"] == pytest.approx(-3.0)  # class 0: 92 - 95
    # context signal: median over classes of the per-class mean (0.002 and 0.5)
    # untrained 93 and 95: training helped class 1 only (92 < 93)
    assert text.startswith("| v | 92.0 / 82.0 | 99.0 / 90.0 | **95.50** / 86.00 | 96.00 | -0.50 | -3.00 | 94.00 (1/2) "
                           "| 0.251 | 2 |")


def test_every_shipped_ablation_variant_is_a_valid_validation_config() -> None:
    from con2lib.paths import project_root

    from benchmarks.ablation import variant_configs

    specs = sorted((project_root() / "benchmarks" / "ablations").glob("*.yaml"))
    assert specs
    for spec in specs:
        _, _, configs = variant_configs(spec, [0], [0], {})
        assert configs
        for per_class in configs.values():
            assert all(cfg.eval_split == "validation" for cfg in per_class[0])  # choosing never reads the test split
    _, _, swept = variant_configs(specs[0], [1, 2], [0, 1], {"variants": {"t=1": {"temperature": 1.0}}})
    assert [c.temperature for c in swept["t=1"][2]] == [1.0, 1.0] and [c.seed for c in swept["t=1"][1]] == [0, 1]


def test_pixel_baseline_in_blocks_equals_one_block(monkeypatch) -> None:
    import torch

    import con2lib.method.scores.pixels as baselines
    from con2lib.method.scores import nnd_score

    gen = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (300, 1, 8, 8), dtype=torch.uint8, generator=gen)
    test = torch.randint(0, 256, (130, 1, 8, 8), dtype=torch.uint8, generator=gen)
    whole = nnd_score(test.flatten(1).float(), train.flatten(1).float())
    monkeypatch.setattr(baselines, "_PIXEL_BLOCK_BYTES", 4 * 64 * 70)  # 70-row blocks: several on each side
    torch.testing.assert_close(baselines.pixel_knn_scores(train, test), whole)


def test_readme_results_come_from_the_store(fast_store, tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    from con2lib.paramfiles import load_params
    from con2lib.paths import project_root
    from con2lib.runs.run_info import TAG_MACHINE

    from benchmarks import readme_results

    params = load_params(project_root() / "params" / "quickstart.yaml")
    cfg = Config.from_params(params)
    client = MlflowClient()
    experiment = make_experiment(cfg.experiment, tmp_path)
    logged = {k: ",".join(map(str, v)) if isinstance(v, list) else str(v) for k, v in cfg.to_dict().items()}
    for epochs, nnd in ((cfg.epochs, 0.9071), (3, 0.5)):  # a run with -p epochs 3 is not the quickstart
        run = client.create_run(experiment, tags={TAG_MACHINE: "Test CPU, 2 cores"})
        for key, value in {**logged, "epochs": str(epochs), "context_resolved": "rot90"}.items():
            client.log_param(run.info.run_id, key, value)
        for key, value in {"auroc_nnd": nnd, "auroc_lh": 0.925, "auroc_nnd_notta": 0.847, "auroc_lh_notta": 0.886,
                           "auroc_ssd": 0.926}.items():
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id, "FINISHED")
    table = readme_results.results_table(client)
    [quick, fashion] = table.splitlines()[2:]
    assert "| 90.7 / 92.5 | 84.7 / 88.6 | 92.6 |" in quick and "| Test CPU, 2 cores |" in quick
    assert "(digits, class 8, auto -> rot90, 40 epochs, seed 0)" in quick  # what context: auto chose
    assert re.search(r"\| \d{4}-\d\d-\d\d \|$", quick)
    assert "no run yet: `con2 run params/fashionmnist.yaml`" in fashion
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{readme_results.START}\nold numbers\n{readme_results.END}\nrest\n")
    assert readme_results.main(["--write", str(readme)]) == 0
    text = readme.read_text()
    assert "old numbers" not in text and table in text and text.startswith("intro\n") and text.endswith("rest\n")
