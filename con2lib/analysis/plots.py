"""Interactive plotly figures of a run: context examples, the representation space (paper Figure 1),
ROC curves and score histograms."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from sklearn.decomposition import PCA
from sklearn.metrics import roc_curve

from con2lib.method.augment import context_augment

_COLOURS = {"train": "#7f7f7f", "normal test": "#1f77b4", "anomalous test": "#d62728"}


def context_examples(images: torch.Tensor, context: str, n: int = 8) -> go.Figure:
    """Top row: normal training images x; below, one row per context copy t_c(x) (``context`` may list
    several, comma-separated)."""
    x = images[:n].float() / 255.0
    rows = [x] + [context_augment(x, c.strip()) for c in context.split(",")]
    fig = make_subplots(rows=len(rows), cols=len(x), horizontal_spacing=0.01, vertical_spacing=0.04)
    for r, batch in enumerate(rows, start=1):
        for c, img in enumerate(batch, start=1):
            rgb = (img.expand(3, -1, -1) if img.shape[0] == 1 else img).permute(1, 2, 0).numpy() * 255
            fig.add_trace(go.Image(z=rgb.astype(np.uint8), hoverinfo="skip"), row=r, col=c)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(title=f"normal images (top) and their '{context}' context copies (below)",
                      height=130 * len(rows), margin=dict(l=10, r=10, t=40, b=10))
    return fig


def representation_space(train: torch.Tensor, train_ctx: torch.Tensor, test: torch.Tensor, test_ctx: torch.Tensor,
                         labels: torch.Tensor, max_points: int = 300, seed: int = 0) -> go.Figure:
    """2-D PCA of encoder features in both contexts, as the paper's Figure 1.

    Args:
        train, train_ctx: (n, F) features of training images and of their context copies.
        test, test_ctx: (T, F) features of test images and of their context copies.
        labels: (T,) 1 = anomalous.
        max_points: samples drawn per group (train, normal test, anomalous test).

    Each test sample is joined by a line to its context copy: parallel lines show aligned normal
    samples, which anomalies fail to achieve.
    """
    def unit(z: torch.Tensor) -> np.ndarray:
        return torch.nn.functional.normalize(z.float(), dim=1).cpu().numpy()

    pca = PCA(n_components=2, random_state=seed).fit(np.concatenate([unit(train), unit(train_ctx)]))
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    groups = {
        "train": (unit(train), unit(train_ctx), np.arange(len(train))),
        "normal test": (unit(test), unit(test_ctx), np.flatnonzero(labels == 0)),
        "anomalous test": (unit(test), unit(test_ctx), np.flatnonzero(labels == 1)),
    }
    fig = go.Figure()
    for name, (orig, ctx, idx) in groups.items():
        if len(idx) > max_points:
            idx = np.sort(rng.choice(idx, max_points, replace=False))
        a, b = pca.transform(orig[idx]), pca.transform(ctx[idx])
        if name != "train":
            xs = np.column_stack([a[:, 0], b[:, 0], np.full(len(idx), np.nan)]).ravel()
            ys = np.column_stack([a[:, 1], b[:, 1], np.full(len(idx), np.nan)]).ravel()
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(width=0.5, color=_COLOURS[name]),
                                     opacity=0.25, hoverinfo="skip", showlegend=False, legendgroup=name))
        symbol = {"train": "circle", "normal test": "diamond", "anomalous test": "x"}[name]
        for pts, ctx_name, fill in ((a, "original", 1.0), (b, "context", 0.5)):
            fig.add_trace(go.Scatter(
                x=pts[:, 0], y=pts[:, 1], mode="markers", name=f"{name} ({ctx_name})", legendgroup=name,
                marker=dict(symbol=symbol, size=6, color=_COLOURS[name], opacity=fill),
                customdata=idx, hovertemplate=f"{name}, {ctx_name}<br>index %{{customdata}}<extra></extra>"))
    fig.update_layout(title="representation space: 2-D PCA of encoder features in both contexts",
                      xaxis_title="PC 1", yaxis_title="PC 2", height=600, template="plotly_white")
    return fig


def roc_figure(labels: torch.Tensor, scores: dict[str, torch.Tensor], aurocs: dict[str, float]) -> go.Figure:
    """ROC curves of several scores on one plot, AUROC in the legend."""
    fig = go.Figure()
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(np.asarray(labels), np.asarray(s, dtype=np.float64))
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"{name} (AUROC {100 * aurocs[name]:.1f})"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"), name="chance"))
    fig.update_layout(title="ROC curve", xaxis_title="false-positive rate", yaxis_title="true-positive rate",
                      height=450, width=550, template="plotly_white")
    return fig


def score_histogram(labels: torch.Tensor, scores: torch.Tensor, name: str) -> go.Figure:
    """Overlaid histograms of a score for normal and anomalous test images."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    fig = go.Figure()
    for value, group in ((0, "normal test"), (1, "anomalous test")):
        fig.add_trace(go.Histogram(x=scores[labels == value], name=group, opacity=0.6, histnorm="probability density",
                                   marker_color=_COLOURS[group], nbinsx=50))
    fig.update_layout(barmode="overlay", title=f"{name} on the test set", xaxis_title=name, height=350,
                      template="plotly_white")
    return fig
