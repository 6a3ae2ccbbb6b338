"""Comparing runs: MLflow runs as one table, statistics over seeds, and the paper's analyses.

Every function takes and returns pandas frames or tensors; the notebooks ``compare``, ``explore`` and
``efficiency`` only call them and draw. Missing data is never an error: a run without a metric, a
seed or an augmentation that was never run shows up as a gap (NaN), an absent metric as an empty frame.
AUROC metrics (names starting with ``auroc``) are logged in [0, 1] and reported here in percent.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from con2lib.analysis.pooling import config_of, separate_configs
from con2lib.config import CONTEXTS, LOSSES

PARAM_COLUMNS = ("dataset", "normal_class", "context", "loss", "seed")
ID_COLUMNS = ("run_id", "experiment", "run_name", "start_time", *PARAM_COLUMNS, "normal_class_name")
SCORE_METRICS = ("auroc_nnd", "auroc_lh", "auroc_ssd")
TTA_METRICS = {"auroc_nnd": "auroc_nnd_notta", "auroc_lh": "auroc_lh_notta"}
SILHOUETTE_METRIC = "silhouette_context"
REPORT_TAG = "con2.report"
STATS = ("mean", "std", "n", "runs")

__all__ = ["as_list", "format_pivot", "load_runs", "melt_metrics", "method_runs", "missing_variants", "pivot_table",
           "style_pivot", "summarise", "tta_effect"]


def as_list(value: str | Sequence[str] | None) -> list[str]:
    """A list of names from a list or a comma-separated string (papermill's ``-p name a,b``)."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(v).strip() for v in items if str(v).strip()]


def load_runs(experiments: str | Sequence[str] | None = None, filter_string: str = "",
              tracking_uri: str | None = None, extra_params: Sequence[str] = ()) -> pd.DataFrame:
    """FINISHED runs of some experiments as one flat frame.

    Args:
        experiments: experiment names (list or comma string); None or empty = every experiment.
            Unknown names are skipped with a warning.
        filter_string: an MLflow search filter (e.g. ``"params.epochs = '30'"``), ANDed with status.
        tracking_uri: the store; default: the project's (``con2lib.runs.tracking.tracking_uri()``).
        extra_params: more params to return as columns (named as the param).

    Returns:
        One row per run: run_id, experiment, run_name, start_time, dataset, normal_class (str),
        context, loss, seed (Int64), normal_class_name (from ``data.normal_classes``), the extra
        params, ``config`` (JSON of every setting but :data:`POOLED_OVER`: runs that may be pooled
        share it: :mod:`con2lib.analysis.pooling`), then every metric by name (its last value). A
        metric named like a column above (the per-epoch ``loss``) gets the suffix ``_last``. Report
        runs (tag ``con2.report``) and runs without a ``dataset`` param (not training runs) are left out.
    """
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    from con2lib.runs import tracking

    client = MlflowClient(tracking_uri=tracking_uri or tracking.tracking_uri())
    names = as_list(experiments)
    if names:
        found = {n: client.get_experiment_by_name(n) for n in names}
        for name in [n for n, e in found.items() if e is None]:
            warnings.warn(f"no experiment named {name!r} in {client.tracking_uri}", stacklevel=2)
        exps = [e for e in found.values() if e is not None]
    else:
        exps = client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
    exp_names = {e.experiment_id: e.name for e in exps}
    query = "attributes.status = 'FINISHED'" + (f" AND {filter_string}" if filter_string.strip() else "")
    rows, token = [], None
    while exp_names:
        page = client.search_runs(list(exp_names), query, ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        rows += [_flatten(r, exp_names, extra_params) for r in page
                 if r.data.tags.get(REPORT_TAG) != "true" and "dataset" in r.data.params]
        token = page.token
        if not token:
            break
    columns = [*ID_COLUMNS, *extra_params, "config"]
    frame = pd.DataFrame(rows, columns=None if rows else columns)
    frame["seed"] = pd.to_numeric(frame["seed"], errors="coerce").astype("Int64")
    metrics = sorted(c for c in frame.columns if c not in columns)
    return frame[columns + metrics].reset_index(drop=True)


def _flatten(run: Any, exp_names: dict[str, str], extra: Sequence[str]) -> dict[str, Any]:
    params = run.data.params
    row = {"run_id": run.info.run_id, "experiment": exp_names[run.info.experiment_id],
           "run_name": run.info.run_name, "start_time": pd.to_datetime(run.info.start_time, unit="ms"),
           **{k: params.get(k) for k in PARAM_COLUMNS}, "normal_class_name": params.get("data.normal_classes"),
           **{k: params.get(k) for k in extra}, "config": config_of(params)}
    for name, value in run.data.metrics.items():
        row[f"{name}_last" if name in row else name] = value
    return row


def melt_metrics(runs: pd.DataFrame, metrics: str | Sequence[str]) -> pd.DataFrame:
    """Long format: one row per run and metric present, columns ``score`` (metric name) and ``value``.

    AUROCs are converted to percent; NaN values (a run that lacks the metric) are dropped.
    """
    present = [m for m in as_list(metrics) if m in runs.columns]
    ids = [c for c in runs.columns if c not in present]
    long = runs.melt(id_vars=ids, value_vars=present, var_name="score", value_name="value")
    long = long.dropna(subset=["value"])
    long["value"] = long["value"].astype(float) * np.where(long["score"].str.startswith("auroc"), 100.0, 1.0)
    return long


def summarise(runs: pd.DataFrame, metrics: str | Sequence[str], by: Sequence[str],
              pool_over: Sequence[str] = ()) -> pd.DataFrame:
    """Mean, std (over runs), n (distinct seeds) and runs per group and metric.

    Runs are pooled only when they differ in the seed or in the params ``pool_over`` (e.g. the normal
    class, for a mean over classes); groups of other unlike runs are split (:func:`separate_configs`).

    Returns:
        Columns ``*by, score, mean, std, n, runs``; empty when no run has any of the metrics.
    """
    long = melt_metrics(separate_configs(runs, by, pool_over), metrics)
    keys = list(dict.fromkeys([*by, "score"]))
    if long.empty:
        return pd.DataFrame(columns=[*keys, *STATS])
    g = long.groupby(keys, dropna=False, sort=False)
    out = g["value"].agg(mean="mean", std="std", runs="size").join(g["seed"].nunique().rename("n"))
    return out[list(STATS)].reset_index().sort_values(keys, key=_sort_key(as_list(metrics)), kind="stable",
                                                      ignore_index=True)


def pivot_table(runs: pd.DataFrame, rows: Sequence[str] = ("dataset", "normal_class"),
                columns: Sequence[str] = ("context",), metric: str | Sequence[str] = "auroc_nnd",
                column_values: Sequence[Any] | None = None, pool_over: Sequence[str] = ()) -> pd.DataFrame:
    """Table 1/2/4-style statistics over seeds: rows x columns, one cell per group of runs.

    Args:
        runs: from :func:`load_runs` (or any frame with the columns named here and ``seed``).
        rows, columns: grouping columns; with several metrics, ``score`` is added to the columns
            unless it is already in ``rows``.
        metric: one metric or several (list or comma string).
        column_values: the values the (single) column key should show, in order; absent ones
            become empty columns (e.g. every context, run or not).
        pool_over: params besides the seed that a cell may average over (:func:`summarise`).

    Returns:
        Index ``rows``; columns MultiIndex (statistic, *columns) with statistic in mean, std (over
        runs, NaN for one run), n (distinct seeds), runs. Cells without runs are NaN. Empty (no
        rows) when no run has the metric.
    """
    metrics = as_list(metric)
    cols = [*columns] + (["score"] if len(metrics) > 1 and "score" not in (*rows, *columns) else [])
    if not cols:
        raise ValueError("pivot_table needs at least one column key")
    summary = summarise(runs, metrics, [*rows, *cols], pool_over)
    if len(metrics) == 1 and "score" not in (*rows, *cols):
        summary = summary.drop(columns="score")
    table = summary.set_index([*rows, *cols])[list(STATS)].unstack(cols)
    if not isinstance(table.columns, pd.MultiIndex):  # an empty frame unstacks to a flat index
        table.columns = pd.MultiIndex.from_tuples([], names=[None, *cols])
    table = table.sort_index(axis=0, key=_sort_key(metrics)).sort_index(axis=1, key=_sort_key(metrics))
    if column_values is not None and len(cols) == 1:
        table = table.reindex(columns=pd.MultiIndex.from_product([STATS, list(column_values)],
                                                                 names=[None, *cols]))
    return table


BASELINE_METRICS = ("auroc_ssd", "auroc_pixel_knn")  # reference scores: never marked as a row's best cell


def _best_mask(table: pd.DataFrame, higher_is_better: bool) -> pd.DataFrame:
    mean = table["mean"]
    method = np.array([(c[-1] if isinstance(c, tuple) else c) not in BASELINE_METRICS for c in mean.columns])
    pool = mean.loc[:, method] if method.any() else mean  # a table of baselines only: its own best
    best = pool.max(axis=1) if higher_is_better else pool.min(axis=1)
    return mean.eq(best, axis=0) & mean.notna() & (method[None, :] | ~method.any())


def format_pivot(table: pd.DataFrame, decimals: int = 1, marker: str = "*",
                 higher_is_better: bool = True) -> pd.DataFrame:
    """Cells as ``"mean ± std (runs)"`` strings (runs: how many were pooled), the best mean of each row
    suffixed with ``marker`` (the baselines of :data:`BASELINE_METRICS` are never the best).

    One run gives ``"mean (1)"``; an empty cell gives ``""``. Multi-level column names are joined
    with " | " so the frame writes to a one-header CSV.
    """
    if table.empty:
        return pd.DataFrame(index=table.index)
    mean, std, n = table["mean"], table["std"], table["runs"]
    best = _best_mask(table, higher_is_better)

    def cell(m: float, s: float, k: float, top: bool) -> str:
        if pd.isna(m):
            return ""
        spread = "" if pd.isna(s) else f" ± {s:.{decimals}f}"
        return f"{m:.{decimals}f}{spread} ({int(k)})" + (marker if top else "")

    out = pd.DataFrame([[cell(mean.iat[i, j], std.iat[i, j], n.iat[i, j], best.iat[i, j])
                         for j in range(mean.shape[1])] for i in range(mean.shape[0])], index=mean.index)
    out.columns = [" | ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in mean.columns]
    return out


def style_pivot(table: pd.DataFrame, decimals: int = 1, caption: str = "", higher_is_better: bool = True) -> Any:
    """A pandas ``Styler`` of :func:`format_pivot`'s strings with the best cell per row in bold."""
    text = format_pivot(table, decimals, marker="", higher_is_better=higher_is_better)
    if table.empty:
        return text.style.set_caption(caption)
    best = _best_mask(table, higher_is_better).to_numpy()
    css = pd.DataFrame(np.where(best, "font-weight: bold", ""), index=text.index, columns=text.columns)
    return text.style.apply(lambda _: css, axis=None).set_caption(caption)


def tta_effect(runs: pd.DataFrame, by: Sequence[str] = ("dataset",), pool_over: Sequence[str] = ()) -> pd.DataFrame:
    """Each score with and without test-time augmentation, on runs that logged both.

    Returns:
        Columns ``*by, score, tta ("with TTA" / "without TTA"), mean, std, n, runs``.
    """
    parts = []
    for base, plain in TTA_METRICS.items():
        if {base, plain} <= set(runs.columns):
            part = summarise(runs.dropna(subset=[base, plain]), [base, plain], by, pool_over)
            part.insert(len(by) + 1, "tta", np.where(part["score"] == base, "with TTA", "without TTA"))
            part["score"] = base
            parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*by, "score", "tta", *STATS])


def method_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """CON2 and its baselines as one ``method`` column with an ``auroc`` value per run (Table 1).

    CON2 runs (``loss=con2``) give one method per context and score; ``loss=simclr`` runs give
    "SimCLR + S_NND" and, with ``auroc_ssd``, "SSD" (k-means Mahalanobis on SimCLR features).
    """
    con2, simclr = runs[runs["loss"] == "con2"], runs[runs["loss"] == "simclr"]
    picks = [(con2, m, "CON2 (" + con2["context"].astype(str) + ") + " + label)
             for m, label in (("auroc_nnd", "S_NND"), ("auroc_lh", "S_LH"), ("auroc_ssd", "SSD score"))]
    picks += [(simclr, "auroc_nnd", "SimCLR + S_NND"), (simclr, "auroc_ssd", "SSD")]
    parts = [part.assign(method=label, auroc=part[m]) for part, m, label in picks if m in runs.columns]
    out = pd.concat(parts, ignore_index=True) if parts else runs.assign(method="", auroc=np.nan)
    return out.dropna(subset=["auroc"])


def missing_variants(runs: pd.DataFrame, column: str, values: Sequence[str]) -> list[str]:
    """Values of ``column`` (e.g. loss variants) that no run has."""
    seen = set(runs[column].dropna()) if column in runs.columns else set()
    return [v for v in values if v not in seen]


def _sort_key(metrics: Sequence[str]) -> Any:
    """Key for sort_index / sort_values: contexts, losses, statistics and scores in their own order,
    digit strings as numbers ("2" before "10"), anything else alphabetically."""
    order = {None: STATS, "score": list(metrics), "context": CONTEXTS, "loss": LOSSES}

    def key(values: pd.Index | pd.Series) -> pd.Index | pd.Series:
        known = order.get(values.name)
        if known is not None:
            return values.map(lambda v: (list(known).index(v) if v in known else len(known), str(v)))
        return values.map(lambda v: (0, f"{int(v):012d}", "") if str(v).isdigit() else (1, "", str(v)))
    return key
