"""Per-run diagnostics beyond the two main AUROCs: no-TTA scores, the SSD baseline, context clusters.

These feed the comparisons of ``notebooks/compare.ipynb`` (paper Figures 3, 4 and 11): the effect of
test-time augmentation, SSD (k-means + Mahalanobis) on the same features, and how well the encoder
separates the two contexts (silhouette score, appendix E.4), and how far a test image's context copy
lands from it (:func:`context_misalignment`, notebooks/explore.ipynb).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from con2lib.analysis.baselines import SSDScorer
from con2lib.config import Config
from con2lib.method.evaluate import Evaluation, auroc
from con2lib.method.scores import GaussianScorer, nnd_score, nnd_score_views


def run_diagnostics(cfg: Config, result: Evaluation, labels: torch.Tensor, ssd_clusters: int = 1) -> dict[str, float]:
    """Metrics logged with every run, in addition to ``auroc_nnd`` and ``auroc_lh``.

    Args:
        cfg: the run's configuration (shrinkage, seed, TTA count).
        result: the evaluation holding (A, n, F) training and (A, T, F) test features.
        labels: (T,) test labels, 1 = anomaly.
        ssd_clusters: k-means clusters of the SSD baseline (1 in the one-class setting).

    Returns:
        ``auroc_nnd_notta`` / ``auroc_lh_notta`` (the un-augmented image x only), ``auroc_ssd`` (SSD
        on the scored views, averaged like eq. 16: x only for SimCLR) and ``silhouette_context``
        (un-augmented test features of x against those of its first context copy); with
        ``tta_identity`` and more than one view per context also ``auroc_nnd_identity`` /
        ``auroc_lh_identity``: the un-augmented views only (x and its context copies), which equals
        the score of ``tta`` = number of contexts for the same model, so one run measures both.
    """
    train, test = result.train_features, result.test_features
    per = cfg.views_per_context  # view k * per: the un-augmented copy in context k (with tta_identity)
    # without TTA: the un-augmented x (view 0 with tta_identity; extracted apart when every view is augmented)
    nnd0 = nnd_score(result.plain_test[0], result.plain_train[0]).cpu()
    lh0 = GaussianScorer(cfg.lh_shrinkage).fit(result.plain_train[0]).score(result.plain_test[0]).cpu()
    ssd = SSDScorer(cfg.lh_shrinkage).fit(train, n_clusters=ssd_clusters, seed=cfg.seed).score(test).mean(0).cpu()
    identity = {}
    if cfg.tta_identity and per > 1:
        first = list(range(0, cfg.n_views, per))
        nnd_id = nnd_score_views(test[first], train[first]).cpu()
        lh_id = GaussianScorer(cfg.lh_shrinkage).fit(train[first]).score(test[first]).mean(0).cpu()
        identity = {"auroc_nnd_identity": auroc(labels, nnd_id), "auroc_lh_identity": auroc(labels, lh_id)}
    return {
        **identity,
        "auroc_nnd_notta": auroc(labels, nnd0),
        "auroc_lh_notta": auroc(labels, lh0),
        "auroc_ssd": auroc(labels, ssd),
        "silhouette_context": silhouette_context(result.plain_test[0], result.plain_test[1], seed=cfg.seed),
    }


def silhouette_context(features_x: torch.Tensor | np.ndarray, features_xc: torch.Tensor | np.ndarray,
                       max_points: int = 2000, seed: int = 0) -> float:
    """Silhouette score of features labelled by their context (paper appendix E.4).

    Args:
        features_x: (N, F) features of images x (e.g. test features of TTA view 0).
        features_xc: (M, F) features of their context copies t_c(x) (view A/2).
        max_points: at most this many points in total, half from each context (seeded draw):
            the silhouette costs O(N^2).
        seed: draw seed.

    Returns:
        A value in [-1, 1] (cosine distance): near 1 = two separate context clusters, about 0 =
        overlapping ones.
    """
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(seed)
    parts = []
    for feats in (features_x, features_xc):
        z = torch.as_tensor(feats).float().cpu().numpy()
        if len(z) > max_points // 2:
            z = z[np.sort(rng.choice(len(z), max_points // 2, replace=False))]
        parts.append(z)
    labels = np.repeat([0, 1], [len(parts[0]), len(parts[1])])
    return float(silhouette_score(np.concatenate(parts), labels, metric="cosine"))


def context_misalignment(train_features: torch.Tensor, test_features: torch.Tensor,
                         view: int | None = None) -> torch.Tensor:
    """How far each test image's context copy lands from it, relative to training images.

    Args:
        train_features: (A, n, F) features per TTA view (view 0 = x, view A/2 = t_c(x)).
        view: the view of the context copy when not A/2 (several contexts: ``cfg.views_per_context``).
        test_features: (A, T, F) the same for the test images.

    Returns:
        (T,) cosine distance between the features of x and of t_c(x), divided by the median of that
        distance over the training images: about 1 = aligned as usual, >> 1 = alignment failure.
    """
    half = train_features.shape[0] // 2 if view is None else view  # the first context copy's view

    def distance(f: torch.Tensor) -> torch.Tensor:
        return 1 - F.cosine_similarity(f[0].float(), f[half].float(), dim=-1)

    return (distance(test_features) / distance(train_features).median().clamp_min(1e-12)).cpu()
