"""Plotly figures of the comparison and exploration notebooks.

Bar charts take the long summaries of :mod:`con2lib.analysis.compare` (columns ``mean``, ``std``, ``n``,
``runs``) and draw the mean with the standard deviation over runs as error bar; hover shows the
number of seeds and runs behind each bar.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from plotly.subplots import make_subplots

SCORE_LABELS = {"auroc_nnd": "S_NND", "auroc_lh": "S_LH", "auroc_ssd": "SSD score"}
_GROUP_COLOURS = {"train": "#7f7f7f", "normal test": "#1f77b4", "anomalous test": "#d62728"}


def bar_figure(summary: pd.DataFrame, x: str, colour: str, title: str, facet: str | None = None,
               y_title: str = "AUROC (%)") -> go.Figure:
    """Grouped bars of ``mean`` +- ``std`` with ``x`` on the axis and ``colour`` side by side.

    Args:
        summary: a long frame with columns x, colour, (facet), mean, std, n, runs.
        x, colour, facet: column names; ``facet`` splits into side-by-side panels.
    """
    data = summary.assign(std=summary["std"].astype(float).fillna(0.0),
                          **{c: summary[c].astype(str) for c in (x, colour, facet) if c})
    if "score" in (x, colour, facet):
        data["score"] = data["score"].map(lambda s: SCORE_LABELS.get(s, s))
    fig = px.bar(data, x=x, y="mean", color=colour, error_y="std", facet_col=facet, barmode="group",
                 hover_data={"n": True, "runs": True, "std": ":.2f", "mean": ":.2f"},
                 labels={"mean": y_title, "n": "seeds"}, title=title, template="plotly_white")
    fig.update_xaxes(type="category")
    fig.update_layout(height=420, legend_title_text=colour)
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    return fig


def scores_figure(summary: pd.DataFrame) -> go.Figure:
    """Figure 3: S_NND vs S_LH (and the SSD score) per data set, one panel per context."""
    return bar_figure(summary, "dataset", "score", "AUROC per score (paper Figure 3)", facet="context")


def loss_figure(summary: pd.DataFrame) -> go.Figure:
    """Figure 4: CON2 vs its single loss terms vs SimCLR per data set, one panel per context."""
    return bar_figure(summary, "dataset", "loss", "AUROC per loss variant (paper Figure 4)", facet="context")


def class_figure(summary: pd.DataFrame, dataset: str) -> go.Figure:
    """Figure 6: AUROC per normal class of a one-class benchmark, one bar per context augmentation."""
    data = summary.copy()
    names = data.get("normal_class_name", pd.Series(index=data.index, dtype=object)).fillna("")
    data["normal class"] = [f"{c} {n}".strip() if str(n) != str(c) else str(c)
                            for c, n in zip(data["normal_class"], names, strict=True)]
    return bar_figure(data, "normal class", "context", f"{dataset}: AUROC per normal class (paper Figure 6)")


def tta_figure(summary: pd.DataFrame) -> go.Figure:
    """AUROC with and without test-time augmentation per data set, one panel per score."""
    return bar_figure(summary, "dataset", "tta", "effect of test-time augmentation (eq. 16)", facet="score")


def silhouette_figure(summary: pd.DataFrame) -> go.Figure:
    """Figure 11: silhouette score of the context clusters per data set and context."""
    fig = bar_figure(summary, "dataset", "context", "context clusters: silhouette score (paper Figure 11)",
                     y_title="silhouette (cosine)")
    fig.update_yaxes(range=[-1, 1])
    return fig


def efficiency_figure(timings: pd.DataFrame, sweep: str, value: str = "total_s") -> go.Figure:
    """Figure 10: ``value`` of S_NND and S_LH against n (``sweep="n"``) or scored batches, log-log."""
    data = timings[(timings["sweep"] == sweep) & timings[value].notna()]
    x = "n" if sweep == "n" else "batches"
    fixed = (f"{int(data['batches'].iloc[0])} batches of {int(data['batch_size'].iloc[0])}" if sweep == "n"
             else f"n = {int(data['n'].iloc[0])}, batches of {int(data['batch_size'].iloc[0])}") if len(data) else ""
    y_title = {"total_s": "seconds (fit + scoring)", "fit_s": "seconds (fit)", "score_s": "seconds (scoring)",
               "stored_bytes": "bytes kept between batches", "peak_bytes": "peak CUDA bytes above inputs"}[value]
    fig = px.line(data, x=x, y=value, color="score", markers=True, log_x=True, log_y=True,
                  labels={value: y_title, "n": "training features n", "batches": "scored batches"},
                  title=f"{y_title} vs {'n' if sweep == 'n' else 'number of scored batches'} ({fixed})",
                  template="plotly_white")
    fig.update_layout(height=400)
    return fig


def embed_2d(features: torch.Tensor | np.ndarray, method: str = "pca", seed: int = 0,
             n_neighbors: int = 15) -> tuple[np.ndarray, tuple[str, str]]:
    """(N, F) features -> (N, 2) coordinates of the L2-normalised features by PCA or UMAP (seeded), and the
    axis titles: ``PC1 (41.2% of variance)``, ``PC2 (...)``; ``UMAP 1``, ``UMAP 2``."""
    z = F.normalize(torch.as_tensor(features).float(), dim=1).cpu().numpy()
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=seed)
        coords = pca.fit_transform(z)
        first, second = pca.explained_variance_ratio_
        return coords, (f"PC1 ({100 * first:.1f}% of variance)", f"PC2 ({100 * second:.1f}% of variance)")
    if method == "umap":
        import umap  # umap-learn: imported late, its numba compilation takes seconds

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "n_jobs overridden by random_state": seeded means serial
            return umap.UMAP(n_components=2, n_neighbors=max(2, min(n_neighbors, len(z) - 1)),
                             random_state=seed).fit_transform(z), ("UMAP 1", "UMAP 2")
    raise ValueError(f"method={method!r}: expected 'pca' or 'umap'")


def embedding_figure(coords: np.ndarray, group: Sequence[str], hover: pd.DataFrame, title: str,
                     axes: tuple[str, str]) -> go.Figure:
    """Scatter of 2-D coordinates, one trace per group (train / normal test / anomalous test, and
    the same names suffixed " (context)" for context copies, drawn hollow).

    Args:
        coords, axes: (N, 2) coordinates and the axis titles (:func:`embed_2d`).
        group: (N,) group name of each point.
        hover: N rows of columns shown on hover (e.g. label, class, score, index).
    """
    group = np.asarray(group)
    fig = go.Figure()
    columns = list(hover.columns)
    template = "<br>".join(f"{c}: %{{customdata[{i}]}}" for i, c in enumerate(columns)) + "<extra></extra>"
    for name in dict.fromkeys(group):
        mask = group == name
        base = name.removesuffix(" (context)")
        fig.add_trace(go.Scattergl(
            x=coords[mask, 0], y=coords[mask, 1], mode="markers", name=name,
            # context copies share their group's colour, hollow, so both clusters read as one pair
            marker=dict(size=5, color=_GROUP_COLOURS.get(base), opacity=0.7,
                        symbol=("x" if base == "anomalous test" else "circle") + ("-open" if base != name else "")),
            customdata=hover[mask].astype(str).to_numpy(), hovertemplate=template))
    fig.update_layout(title=title, height=550, template="plotly_white", xaxis_title=axes[0], yaxis_title=axes[1])
    return fig


def image_grid(rows: Sequence[torch.Tensor], titles: Sequence[Sequence[str]], row_names: Sequence[str],
               title: str) -> go.Figure:
    """Rows of images as ``go.Image`` subplots.

    Args:
        rows: R uint8 (k, C, H, W) or float [0, 1] tensors of k images each (C = 1 or 3).
        titles: R lists of k short captions.
        row_names: R names, shown on the first image of each row.
    """
    k = max((len(r) for r in rows), default=0)
    captions = [(f"{row_names[r]}: " if j == 0 else "") + (titles[r][j] if j < len(titles[r]) else "")
                for r in range(len(rows)) for j in range(k)]
    fig = make_subplots(rows=max(1, len(rows)), cols=max(1, k), subplot_titles=captions,
                        horizontal_spacing=0.01, vertical_spacing=0.08)
    for r, images in enumerate(rows, start=1):
        for c, img in enumerate(images, start=1):
            img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
            rgb = (img.expand(3, -1, -1) if img.shape[0] == 1 else img).permute(1, 2, 0).cpu().numpy()
            fig.add_trace(go.Image(z=(rgb * 255).round().astype(np.uint8), hoverinfo="skip"), row=r, col=c)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_annotations(font_size=9)
    fig.update_layout(title=title, height=150 + 150 * len(rows), margin=dict(l=10, r=10, t=70, b=10))
    return fig
