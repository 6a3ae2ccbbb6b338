"""Run comparison, the SSD baseline, silhouette and efficiency measures, and the analysis notebooks."""

from __future__ import annotations

import json
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import papermill
import pytest
import torch
import torch.nn.functional as F
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from scipy.spatial.distance import mahalanobis
from sklearn.cluster import KMeans

from con2lib.analysis import compare
from con2lib.analysis.baselines import SSDScorer, time_scores
from con2lib.analysis.metrics import context_misalignment, silhouette_context
from con2lib.config import Config
from con2lib.data import load_dataset
from con2lib.method.device import seed_everything
from con2lib.method.evaluate import evaluate
from con2lib.method.models import build_model
from con2lib.method.train import fit
from con2lib.serving.calibration import split_calibration
from con2lib.serving.pyfunc_model import log_model
from con2lib.serving.scoring_model import ScoringModel, preprocess_for

from conftest import ROOT, TINY, make_experiment

CLASS_NAMES = {0: "T-shirt/top", 1: "Trouser", 2: "Pullover"}
# (normal class, context, seed, loss): class 1 / flip lacks seed 1, class 2 / flip was never run
RUNS = [(0, "invert", 0, "con2"), (0, "invert", 1, "con2"), (0, "flip", 0, "con2"), (0, "flip", 1, "con2"),
        (1, "invert", 0, "con2"), (1, "invert", 1, "con2"), (1, "flip", 0, "con2"), (2, "invert", 0, "con2"),
        (0, "invert", 0, "simclr")]
NO_SSD = (1, "invert", 1, "con2")  # an "older" run without auroc_ssd


def nnd(cls: int, context: str, seed: int, loss: str) -> float:
    return 0.80 + 0.05 * cls + 0.01 * seed + (0.02 if context == "flip" else 0.0) - (0.1 if loss == "simclr" else 0)


def metrics_of(key: tuple) -> dict[str, float]:
    value = nnd(*key)
    out = {"auroc_nnd": value, "auroc_lh": value - 0.03, "auroc_ssd": value - 0.1, "auroc_nnd_notta": value - 0.01,
           "auroc_lh_notta": value - 0.05, "silhouette_context": 0.3 + 0.1 * key[2], "loss": 1.5}
    if key == NO_SSD:
        del out["auroc_ssd"]
    return out


def log_run(client: MlflowClient, experiment_id: str, key: tuple, metrics: dict[str, float],
            status: str = "FINISHED", epochs: int = 2) -> str:
    cls, context, seed, loss = key
    run = client.create_run(experiment_id, run_name=f"{cls}-{context}-{seed}-{loss}")
    params = {"dataset": "fashionmnist", "normal_class": cls, "context": context, "seed": seed, "loss": loss,
              "epochs": epochs, "data.normal_classes": CLASS_NAMES[cls]}
    now = int(time.time() * 1000)
    client.log_batch(run.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                     params=[Param(k, str(v)) for k, v in params.items()])
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


@pytest.fixture(scope="module")
def runs_template(tmp_path_factory) -> Path:
    """A migrated SQLite store with the RUNS above in experiment 'fashionmnist' and one FAILED run.

    Built once: creating an MLflow SQLite store runs its migrations (seconds), so each test copies it.
    """
    folder = tmp_path_factory.mktemp("runs-template")
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment_id = client.create_experiment("fashionmnist", artifact_location=(folder / "artifacts").as_uri())
    for key in RUNS:
        log_run(client, experiment_id, key, metrics_of(key))
    log_run(client, experiment_id, (0, "invert", 2, "con2"), {"auroc_nnd": 0.01}, status="FAILED")
    return folder / "mlflow.db"


@pytest.fixture
def runs_store(store, tmp_path, runs_template) -> dict[str, str]:
    """The ``store`` fixture's temporary store, holding the template's runs."""
    shutil.copyfile(runs_template, tmp_path / "mlflow.db")
    return store


def direct(metric: str, cls: int, context: str) -> tuple[float, float, int]:
    values = [100 * metrics_of(k)[metric] for k in RUNS
              if k[:2] == (cls, context) and k[3] == "con2" and metric in metrics_of(k)]
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else np.nan, len(values)


def test_load_runs_flattens_finished_runs_only(runs_store) -> None:
    runs = compare.load_runs(["fashionmnist"])
    assert len(runs) == len(RUNS)  # the FAILED run is excluded
    assert list(runs.columns[:10]) == list(compare.ID_COLUMNS)
    assert runs["seed"].dtype == "Int64" and set(runs["normal_class"]) == {"0", "1", "2"}
    assert "loss_last" in runs and (runs["loss_last"] == 1.5).all()  # the per-epoch metric named like the param
    seeds = runs[(runs["normal_class"] == "0") & (runs["context"] == "invert") & (runs["loss"] == "con2")]
    assert seeds["config"].nunique() == 1 and '"epochs": "2"' in seeds["config"].iloc[0]  # seed not in it
    no_ssd = runs[(runs["normal_class"] == "1") & (runs["context"] == "invert") & (runs["seed"] == 1)]
    assert no_ssd["auroc_ssd"].isna().all() and runs["auroc_ssd"].notna().sum() == len(RUNS) - 1
    assert len(compare.load_runs("fashionmnist", "params.context = 'flip'")) == 3
    assert len(compare.load_runs(None)) == len(RUNS)
    with pytest.warns(UserWarning, match="no experiment named"):
        empty = compare.load_runs("nope,also_nope")
    assert empty.empty and list(empty.columns) == [*compare.ID_COLUMNS, "config"]


def test_pivot_table_matches_direct_statistics(runs_store) -> None:
    runs = compare.load_runs("fashionmnist")
    con2 = runs[runs["loss"] == "con2"]
    for metric in ("auroc_nnd", "auroc_ssd"):
        table = compare.pivot_table(con2, metric=metric, column_values=["invert", "flip", "equalize"])
        for cls in (0, 1):
            for context in ("invert", "flip"):
                mean, std, n = direct(metric, cls, context)
                cell = table.loc[("fashionmnist", str(cls))]
                assert cell[("mean", context)] == pytest.approx(mean)
                assert cell[("n", context)] == n
                assert cell[("std", context)] == pytest.approx(std, nan_ok=True)
        assert np.isnan(table.loc[("fashionmnist", "2"), ("mean", "flip")])  # never run: a gap
        assert table[("mean", "equalize")].isna().all()
    ssd = compare.pivot_table(con2, metric="auroc_ssd")
    assert ssd.loc[("fashionmnist", "1"), ("n", "invert")] == 1  # the run without auroc_ssd is a gap
    both = compare.pivot_table(con2, rows=("dataset",), metric=["auroc_nnd", "auroc_lh"])
    assert list(both["mean"].columns) == [("invert", "auroc_nnd"), ("invert", "auroc_lh"),
                                          ("flip", "auroc_nnd"), ("flip", "auroc_lh")]
    assert compare.pivot_table(con2, metric="auroc_missing").empty
    assert compare.format_pivot(compare.pivot_table(con2, metric="auroc_missing")).empty


def test_format_and_style_mark_the_best_cell_and_leave_gaps(runs_store) -> None:
    runs = compare.load_runs("fashionmnist")
    table = compare.pivot_table(runs[runs["loss"] == "con2"])
    text = compare.format_pivot(table)
    mean, std, _ = direct("auroc_nnd", 0, "flip")
    assert text.loc[("fashionmnist", "0"), "flip"] == f"{mean:.1f} ± {std:.1f} (2)*"
    assert text.loc[("fashionmnist", "0"), "invert"].endswith("(2)")
    assert re.fullmatch(r"\d+\.\d \(1\)\*", text.loc[("fashionmnist", "1"), "flip"])  # one seed: no std
    assert text.loc[("fashionmnist", "2"), "flip"] == ""
    html = compare.style_pivot(table, caption="AUROC").to_html()
    bold = set(re.findall(r"row(\d+)_col(\d+)", html.split("</style>")[0]))  # cells under the bold rule
    assert bold == {("0", "1"), ("1", "1"), ("2", "0")}  # flip, flip, and invert (the only run of class 2)
    assert "±" in html and "<caption>AUROC</caption>" in html


def test_summaries_tta_and_methods(runs_store) -> None:
    runs = compare.load_runs("fashionmnist")
    summary = compare.summarise(runs, ["auroc_nnd", "auroc_lh", "auroc_ssd"], ["dataset", "loss"],
                                 pool_over=["normal_class", "context"])
    row = summary[(summary["loss"] == "con2") & (summary["score"] == "auroc_ssd")].iloc[0]
    assert row["runs"] == 7 and row["n"] == 2
    tta = compare.tta_effect(runs[runs["loss"] == "con2"], pool_over=["normal_class", "context"])
    assert set(tta["tta"]) == {"with TTA", "without TTA"} and set(tta["score"]) == {"auroc_nnd", "auroc_lh"}
    gap = tta.set_index(["score", "tta"])["mean"]
    assert gap[("auroc_nnd", "with TTA")] - gap[("auroc_nnd", "without TTA")] == pytest.approx(1.0)
    assert compare.tta_effect(runs.drop(columns=["auroc_nnd_notta", "auroc_lh_notta"])).empty
    methods = compare.method_runs(runs)
    assert {"CON2 (invert) + S_NND", "CON2 (flip) + S_LH", "SimCLR + S_NND", "SSD"} <= set(methods["method"])
    assert methods.loc[methods["method"] == "SSD", "auroc"].item() == pytest.approx(nnd(0, "invert", 0, "simclr") - 0.1)
    assert compare.missing_variants(runs, "loss", ("con2", "context_only", "simclr")) == ["context_only"]


def test_runs_that_differ_in_more_than_the_seed_are_shown_apart(runs_store) -> None:
    client = MlflowClient()
    experiment_id = client.get_experiment_by_name("fashionmnist").experiment_id
    log_run(client, experiment_id, (0, "invert", 0, "con2"), {"auroc_nnd": 0.99}, epochs=40)
    log_run(client, experiment_id, (2, "invert", 0, "con2"), metrics_of((2, "invert", 0, "con2")))  # seed 0 again
    con2 = compare.load_runs("fashionmnist").query("loss == 'con2'")
    text = compare.format_pivot(compare.pivot_table(con2))
    mean, std, _ = direct("auroc_nnd", 0, "invert")
    assert text.loc[("fashionmnist [epochs=2]", "0"), "invert"] == f"{mean:.1f} ± {std:.1f} (2)"
    assert set(text.index.get_level_values(0)) == {"fashionmnist [epochs=2]", "fashionmnist [epochs=40]"}
    assert text.loc[("fashionmnist [epochs=40]", "0"), "invert"] == "99.0 (1)*"
    assert text.loc[("fashionmnist [epochs=2]", "2"), "invert"] == f"{100 * nnd(2, 'invert', 0, 'con2'):.1f} ± 0.0 (2)*"
    # a mean over classes pools the classes, never the 40-epoch run
    by_dataset = compare.pivot_table(con2, rows=("dataset",), pool_over=["normal_class"])
    assert by_dataset.loc["fashionmnist [epochs=40]", ("runs", "invert")] == 1
    assert by_dataset.loc["fashionmnist [epochs=2]", ("runs", "invert")] == 6


def execute(notebook: str, out_name: str, tmp_path: Path, **parameters: object) -> dict:
    """Runs a notebook of notebooks/ with papermill in the python3 kernel; returns the executed notebook."""
    out = tmp_path / f"{out_name}.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / notebook), str(out), parameters=parameters, cwd=str(ROOT),
                               kernel_name="python3", progress_bar=False)
    return json.loads(out.read_text())


def outputs(nb: dict) -> list[dict]:
    return [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]


def notebook_text(nb: dict) -> str:
    return "".join("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
                   + "".join(o.get("data", {}).get("text/markdown", "")) for o in outputs(nb))


def plot_count(nb: dict) -> int:
    return sum("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs(nb))


def train_and_log_tiny_run(tmp_path: Path) -> str:
    """A tiny trained run logged as the training notebook logs it: its split, AUROCs and model."""
    cfg = Config.from_params({**TINY, "experiment": "explore"})
    seed_everything(cfg.seed)
    data, calibration_images = split_calibration(load_dataset(cfg), cfg.calibration_fraction, cfg.split_seed)
    model = build_model(cfg, data.train.shape[1])
    fit(cfg, model, data.train, progress=False)
    result = evaluate(cfg, model.encoder, data, torch.device("cpu"))
    with mlflow.start_run(experiment_id=make_experiment("explore", tmp_path)) as run:
        mlflow.log_metrics({"auroc_nnd": result.auroc_nnd, "auroc_lh": result.auroc_lh})
        scoring = ScoringModel.from_evaluation(cfg, model.encoder, result, preprocess_for(cfg, 1), torch.device("cpu"))
        scoring.calibrate(calibration_images, cfg.target_fpr)
        log_model(scoring)
    return run.info.run_id


def test_notebooks_are_committed_clean_with_parseable_parameters() -> None:
    expected = {
        "compare": {"experiments", "filter_string", "metrics", "method_loss", "report_experiment", "tracking_uri"},
        "explore": {"run_id", "device", "embeddings", "max_points", "top_k", "tracking_uri"},
        "efficiency": {"n_values", "batches", "d", "batch_size", "n_fixed", "batches_fixed", "repeats", "device"},
    }
    for name, params in expected.items():
        path = ROOT / "notebooks" / f"{name}.ipynb"
        assert set(papermill.inspect_notebook(str(path))) == params, name  # what --help-notebook shows
        cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        assert cells[0]["metadata"]["tags"] == ["parameters"]
        assert all(not c["outputs"] and c["execution_count"] is None for c in cells), name


def test_notebooks_compare_explore_efficiency(runs_store, tmp_path) -> None:
    """All analysis notebooks against one temporary store, executed concurrently (kernels mostly wait on
    start-up and imports): compare with runs and with none, explore on a trained run, efficiency."""
    make_experiment("reports", tmp_path)
    with ThreadPoolExecutor(max_workers=4) as pool:
        jobs = {
            "compare": pool.submit(execute, "compare.ipynb", "compare", tmp_path, experiments="fashionmnist"),
            "empty": pool.submit(execute, "compare.ipynb", "empty", tmp_path, experiments="nothing_here"),
            "efficiency": pool.submit(execute, "efficiency.ipynb", "efficiency", tmp_path, n_values=[1, 50, 200],
                                      batches=[1, 3], d=16, batch_size=8, n_fixed=100, batches_fixed=2, repeats=1,
                                      device="cpu"),
        }
        run_id = train_and_log_tiny_run(tmp_path)
        jobs["explore"] = pool.submit(execute, "explore.ipynb", "explore", tmp_path, run_id=run_id, device="cpu",
                                      top_k=4)
        nbs = {name: job.result() for name, job in jobs.items()}

    # compare: a report run with its tables and figures; missing variants are notes, not errors
    text = notebook_text(nbs["compare"])
    assert "no runs with loss=context_only yet" in text and "no runs with loss=content_only yet" in text
    client = MlflowClient()
    [report] = client.search_runs([client.get_experiment_by_name("reports").experiment_id])
    assert report.data.tags[compare.REPORT_TAG] == "true" and report.data.params["n_runs"] == str(len(RUNS))
    tables = {a.path for a in client.list_artifacts(report.info.run_id, "tables")}
    assert {"tables/auroc_by_class.csv", "tables/auroc_by_class.html", "tables/auroc_by_class_stats.csv",
            "tables/auroc_by_dataset.csv", "tables/methods.csv", "tables/runs.csv"} <= tables
    figures = {a.path for a in client.list_artifacts(report.info.run_id, "figures")}
    assert {"figures/scores.html", "figures/loss_variants.html", "figures/classes_fashionmnist.html",
            "figures/tta.html", "figures/silhouette.html"} <= figures
    csv = pd.read_csv(client.download_artifacts(report.info.run_id, "tables/auroc_by_class.csv", str(tmp_path)))
    mean, std, _ = direct("auroc_nnd", 0, "flip")
    assert f"{mean:.1f} ± {std:.1f} (2)*" in set(csv["flip | auroc_nnd"])
    assert plot_count(nbs["compare"]) == 5
    # no matching run at all: a message, no exception, and no report run of its own
    assert "nothing to compare" in notebook_text(nbs["empty"]) and plot_count(nbs["empty"]) == 0

    # explore: the logged model on the run's split gives the logged AUROCs again; every view is drawn
    text = notebook_text(nbs["explore"])
    for name in ("auroc_nnd", "auroc_lh"):
        recomputed, logged = re.search(rf"{name}: recomputed ([\d.]+), logged ([\d.]+)", text).groups()
        assert recomputed == logged
    assert plot_count(nbs["explore"]) == 8  # PCA, UMAP, 2 histograms, 2 nearest grids, misalignment plots

    # efficiency: runtime vs n and vs batches, stored-statistics memory (peak memory is CUDA-only)
    assert plot_count(nbs["efficiency"]) == 3
    assert "peak memory is measured on CUDA only" in notebook_text(nbs["efficiency"])


def test_time_scores_reports_both_sweeps_and_memory() -> None:
    t = time_scores([1, 64], d=8, batches=[1, 4], batch_size=4, device="cpu", n_fixed=32, repeats=1)
    assert len(t) == 8 and set(t["sweep"]) == {"n", "batches"} and set(t["score"]) == {"S_NND", "S_LH"}
    lh_n1 = t[(t["score"] == "S_LH") & (t["n"] == 1)]
    assert lh_n1["total_s"].isna().all()  # one feature has no covariance
    assert (t.dropna(subset=["total_s"])["total_s"] > 0).all() and t["peak_bytes"].isna().all()
    nnd_row = t[(t["score"] == "S_NND") & (t["sweep"] == "n") & (t["n"] == 64)].iloc[0]
    assert nnd_row["stored_bytes"] == 64 * 8 * 4 and t[t["score"] == "S_LH"]["stored_bytes"].eq((64 + 8 + 1) * 8).all()


def shrunk(cov: np.ndarray, shrinkage: float) -> np.ndarray:
    d = len(cov)
    scale = np.trace(cov) / d
    return (1 - shrinkage) * cov + shrinkage * scale * np.eye(d) + 1e-9 * scale * np.eye(d)


def test_ssd_matches_scipy_mahalanobis_per_cluster() -> None:
    gen = torch.Generator().manual_seed(0)
    train = torch.cat([torch.randn(30, 5, generator=gen) + 4 * torch.eye(5)[i] for i in range(3)])
    test = torch.randn(12, 5, generator=gen) * 2
    scorer = SSDScorer(shrinkage=0.2).fit(train, n_clusters=3, seed=1)
    z = F.normalize(train.double(), dim=1).numpy()
    labels = KMeans(n_clusters=3, random_state=1, n_init=10).fit(z).labels_
    q = F.normalize(test.double(), dim=1).numpy()
    expected = np.full(len(q), np.inf)
    for k in range(3):
        members = z[labels == k]
        inverse = np.linalg.inv(shrunk(np.cov(members, rowvar=False), 0.2))
        dist = [mahalanobis(x, members.mean(0), inverse) for x in q]
        expected = np.minimum(expected, dist)
    np.testing.assert_allclose(scorer.score(test).numpy(), expected, rtol=1e-5)
    assert scorer.n_clusters == 3


def test_ssd_with_one_cluster_is_the_mahalanobis_distance_to_the_mean_and_saves() -> None:
    gen = torch.Generator().manual_seed(1)
    train, test = torch.randn(2, 50, 4, generator=gen), torch.randn(2, 7, 4, generator=gen)
    scorer = SSDScorer(shrinkage=0.0).fit(train, n_clusters=1)
    for v in range(2):
        z = F.normalize(train[v].double(), dim=1).numpy()
        q = F.normalize(test[v].double(), dim=1).numpy()
        centred = q - z.mean(0)
        precision = np.linalg.inv(np.cov(z, rowvar=False))
        closed = np.sqrt(np.einsum("td,de,te->t", centred, precision, centred))
        np.testing.assert_allclose(scorer.score(test)[v].numpy(), closed, rtol=1e-4)
        single = SSDScorer(shrinkage=0.0).fit(train[v], n_clusters=1).score(test[v])
        torch.testing.assert_close(single, scorer.score(test)[v])
    loaded = SSDScorer()
    loaded.load_state_dict(scorer.state_dict())
    torch.testing.assert_close(loaded.score(test), scorer.score(test))
    with pytest.raises(RuntimeError, match="before fit"):
        SSDScorer().score(test)


def test_silhouette_of_context_clusters() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 16, generator=gen) * 0.05 + torch.eye(16)[0]
    xc = torch.randn(300, 16, generator=gen) * 0.05 + torch.eye(16)[1]
    assert silhouette_context(x, xc) > 0.9
    assert silhouette_context(x, x) < 0.05  # every point has a twin in the other "cluster"
    big = torch.randn(5000, 16, generator=gen)
    assert silhouette_context(big, big + 3 * torch.eye(16)[2], max_points=500) > 0


def test_context_misalignment_is_relative_to_training_images() -> None:
    base = F.normalize(torch.randn(20, 8), dim=1)
    rotate = torch.roll(torch.eye(8), 1, dims=0)
    train = torch.stack([base, base + 0.1 * base @ rotate])
    test = torch.stack([base[:3], torch.stack([base[0], -base[1], base[2] + 0.1 * base[2] @ rotate])])
    ratio = context_misalignment(train, test)
    typical = (1 - F.cosine_similarity(train[0], train[1])).median()
    assert ratio[0] == pytest.approx(0.0, abs=1e-3) and ratio[1] == pytest.approx(2 / typical.item(), rel=1e-5)
    own = 1 - F.cosine_similarity(test[0, 2], test[1, 2], dim=0)
    assert ratio[2] == pytest.approx((own / typical).item(), rel=1e-5)


def test_as_list_accepts_papermill_strings() -> None:
    assert compare.as_list("a, b,") == ["a", "b"] and compare.as_list(["x"]) == ["x"]
    assert compare.as_list("") == [] and compare.as_list(None) == []
