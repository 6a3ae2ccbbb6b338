"""Which context augmentation for these normal images? The paper's two assumptions, checked before training.

CON2 needs a context augmentation t_c that is *distinct* (Assumption 1, eq. 9: a transformed normal
image does not look like a normal one) and *aligned* (Assumption 2, eq. 10: distances between normal
images survive the transform). The paper picks t_c by eye (Figures 5 and 8); :func:`check` measures
both on normal images only, in seconds on a CPU, and ranks the candidates.

What it can and cannot tell (measured in docs/contexts.md):

* It catches candidates that violate an assumption: the identity (``permute`` on grayscale), copies
  a linear probe cannot tell from originals (``flip`` without a canonical orientation), ``hflip``
  (the content augmentations already flip left-right), and transforms that scramble the images'
  similarity structure (``equalize`` on digits and Fashion-MNIST). Those trained worst in the
  validation, and the first version of this check, which ignored the content flips, recommended
  ``hflip`` for 3/10 Fashion-MNIST classes where it trained 24-37 points below the best.
* It does NOT predict which of the passing candidates trains best: Spearman correlation with the
  trained AUROC among passing candidates about 0.0-0.3 (digits, 2 seeds; Fashion-MNIST), top pick
  the best-trained context in 0-4 of 10 classes (chance about 2). ``context: auto`` avoids the bad
  candidates; it is no better than a fixed ``invert`` beyond that. Use the table to reject, not to
  choose among the rest.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from con2lib.augment.context import CONTEXT_AUGMENTATIONS, context_augment

if TYPE_CHECKING:
    from con2lib.config import Config

CANDIDATES = ("invert", "flip", "equalize", "rot90", "rot180", "hflip", "permute")
COLUMNS = ("candidate", "rank", "score", "distinct", "distinct_auroc", "aligned", "aligned_pixel", "reason")
PROBE_SIZE = 16  # side of the downsampled images the distinctiveness probe sees
HIST_BINS = 32
FOLDS = 5
NOT_DISTINCT = 0.2  # distinct score below which a candidate is labelled "not distinct" (AUROC within 0.4..0.6)
HFLIP_REASON = "not distinct: the content augmentations flip left-right, so x and hflip(x) are views of each other"
CONTENT_HFLIP = 0.5  # ContentAugment.hflip_p: training flips every view left-right at random
EMBED_SIZE = 32  # side of the images the alignment measures see (random features and pixels)

__all__ = ["CANDIDATES", "COLUMNS", "check", "recommend", "resolve_context"]


def check(images: torch.Tensor, candidates: Sequence[str] = CANDIDATES, max_images: int = 500,
          seed: int = 0, content_hflip: float = CONTENT_HFLIP) -> pd.DataFrame:
    """Scores each candidate context augmentation against Assumptions 1 and 2 on normal images only.

    Distinctiveness (eq. 9): a logistic-regression probe tells originals x from copies t_c(x) on fixed
    features (the image downsampled to 16x16 per channel, a 32-bin intensity histogram per channel,
    row and column profiles of the mean and of the gradient magnitude). Five-fold cross-validation is
    grouped by image, so an image and its copy are never split across train and test folds; the mean
    held-out AUROC is ``distinct_auroc`` and ``distinct = 2 * |AUROC - 0.5|`` (0 = indistinguishable,
    1 = perfectly separable). The probe sees both sides as training does: CON2's content augmentations
    flip every view horizontally with probability 0.5, so originals and copies are each flipped at
    random (``content_hflip``) before the features. Without this, ``hflip`` looks distinct on images
    with a canonical left-right orientation although training turns x and hflip(x) into each other's
    views (it then trained worst on Fashion-MNIST); at 0.5 ``hflip`` is rejected without fitting, and
    ``flip`` and ``rot180`` are judged alike, as training sees them.

    Alignment (eq. 10): Spearman rank correlation between d(x, x') and d(t_c(x), t_c(x')) (Euclidean)
    over all pairs of the images, resized to 32x32. ``aligned`` uses the features of a fixed, seeded,
    untrained 3-layer convolutional network with global average pooling, each set z-scored on its own
    (an overall shift or rescaling, as ``invert`` causes, is no misalignment). ``aligned_pixel`` is
    the same on the pixels: 1 for flips, rotations, ``invert`` and ``permute`` (isometries, and the
    resizing commutes with them), so it only tells photometric transforms such as ``equalize``
    apart; the ranking uses ``aligned``, the one that can differ between geometric candidates. Even
    that means little: distances under f(t_c(.)) are those of another random network (filters
    flipped, rotated or negated), so for geometric candidates ``aligned`` only says how much the
    similarity structure rests on orientation-specific local patterns.

    Ranking: ``score = distinct * max(aligned, 0)`` (both must hold: an identity is perfectly aligned
    but useless); rank 1 first, ties in the candidates' order. The ``reason`` labels use fixed
    thresholds (distinct: AUROC >= 0.8, weakly >= 0.6; aligned: rho >= 0.8, partly >= 0.5).

    Limits (module docstring, docs/contexts.md): both scores describe the images, not what CON2's
    encoder will learn, and never see an anomaly; a low score flagged candidates that trained badly,
    but the order among those that pass did not predict the trained AUROC.

    Args:
        images: uint8 (N, C, H, W) normal images (``OneClassData.train``), C = 1 or 3, square.
        candidates: names of context augmentations (see ``con2lib.augment.context``).
        max_images: at most this many images, a seeded random subset (0 = all).
        seed: subset, random flips and random feature network.
        content_hflip: probability of the random horizontal flip of the content augmentations
            (``ContentAugment.hflip_p``, 0.5 in training); 0 compares the raw images.

    Returns:
        One row per candidate, sorted by rank, with the columns of :data:`COLUMNS`: candidate, rank
        (1 = best), score, distinct (in [0, 1]), distinct_auroc, aligned (Spearman rho, features),
        aligned_pixel (Spearman rho, pixels), reason. A candidate that leaves every image unchanged
        (``permute`` on grayscale) is rejected without fitting: AUROC 0.5, rho 1, score 0.

    Raises:
        ValueError: an unknown candidate, no candidates, or fewer than 4 images.
    """
    names = list(dict.fromkeys(candidates))
    unknown = [n for n in names if n not in CONTEXT_AUGMENTATIONS]
    if unknown or not names:
        raise ValueError(f"unknown context candidate(s) {unknown or '(none given)'}; "
                         f"expected some of {', '.join(CONTEXT_AUGMENTATIONS)}")
    x = _subset(images, max_images, seed)
    if len(x) < 4:
        raise ValueError(f"the context check needs at least 4 normal images, got {len(x)}")
    flips = torch.Generator().manual_seed(seed)
    probe_x = _probe_features(_random_hflip(x, content_hflip, flips))
    net = _random_net(x.shape[1], seed)
    small = _resize(x, EMBED_SIZE)
    d_pixel = _pair_distances(small.flatten(1))
    d_feat = _pair_distances(_standardise(_embed(net, small)))

    rows = []
    for name in names:
        xc = context_augment(x, name)
        identity = name == "permute" and x.shape[1] == 1
        if identity or torch.equal(xc, x):
            # exact values, nothing to estimate: copies equal originals, distances are kept
            what = "identity on grayscale" if identity else "t_c(x) = x on every image"
            rows.append({"candidate": name, "distinct": 0.0, "distinct_auroc": 0.5, "aligned": 1.0,
                         "aligned_pixel": 1.0, "reason": f"not distinct: {what}"})
            continue
        small_c = _resize(xc, EMBED_SIZE)
        aligned_pixel = _spearman(d_pixel, _pair_distances(small_c.flatten(1)))
        aligned = _spearman(d_feat, _pair_distances(_standardise(_embed(net, small_c))))
        if name == "hflip" and content_hflip == 0.5:
            # exact, nothing to estimate: randomly flipped x and randomly flipped hflip(x) are one distribution
            auroc, reason = 0.5, HFLIP_REASON
        else:
            auroc = _separability(probe_x, _probe_features(_random_hflip(xc, content_hflip, flips)))
            reason = ""
        distinct = min(1.0, 2 * abs(auroc - 0.5))
        rows.append({"candidate": name, "distinct": distinct, "distinct_auroc": auroc, "aligned": aligned,
                     "aligned_pixel": aligned_pixel, "reason": reason or _reason(auroc, distinct, aligned)})
    for row in rows:
        row["score"] = row["distinct"] * max(0.0, np.nan_to_num(row["aligned"]))
    table = pd.DataFrame(rows)
    order = np.argsort(-table["score"].to_numpy(), kind="stable")
    table = table.iloc[order].reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1)
    return table[list(COLUMNS)]


def recommend(table: pd.DataFrame) -> str:
    """The top-ranked candidate of a :func:`check` table.

    Not a prediction of the best-training context (see :func:`check`, Limits): it is the candidate
    that satisfies both assumptions most clearly by this check's measures, one of those that pass.

    Warns when even the best candidate is not distinct (every candidate violates Assumption 1): the
    answer is then no better than a default.

    Raises:
        ValueError: an empty table.
    """
    if table.empty:
        raise ValueError("no candidates in the context ranking: nothing to recommend")
    best = table.sort_values("rank", kind="stable").iloc[0]
    if not best["distinct"] >= NOT_DISTINCT:
        warnings.warn(f"no context candidate is distinct on these images; {best['candidate']!r} is only the least "
                      f"bad ({best['reason']})", stacklevel=2)
    return str(best["candidate"])


def resolve_context(cfg: Config, train_images: torch.Tensor) -> tuple[str, pd.DataFrame]:
    """The context to train with: ``cfg.context``, or for ``auto`` the top of :func:`check`.

    ``auto`` avoids candidates that violate an assumption on these images (e.g. ``permute`` on
    grayscale, ``flip`` on images without a canonical orientation, ``hflip``); among those that pass,
    its choice is no better than a fixed ``invert`` (docs/contexts.md).

    Args:
        cfg: the run's configuration.
        train_images: uint8 (N, C, H, W) normal training images, as the run will train on them.

    Returns:
        (context name, ranking table); the table is empty (columns only) unless ``cfg.context`` is
        ``auto``. The caller logs the table (``contexts/ranking.csv``) and the name
        (param ``context_resolved``).
    """
    if cfg.context != "auto":
        return cfg.context, pd.DataFrame(columns=list(COLUMNS))
    table = check(train_images, CANDIDATES, max_images=500, seed=cfg.seed)
    return recommend(table), table


def _subset(images: torch.Tensor, max_images: int, seed: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float (n, C, H, W) in [0, 1], a seeded subset of at most max_images."""
    if images.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) images, got shape {tuple(images.shape)}")
    images = images.cpu()
    if 0 < max_images < len(images):
        keep = np.sort(np.random.default_rng(seed).choice(len(images), max_images, replace=False))
        images = images[torch.from_numpy(keep)]
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    return x.contiguous()


def _random_hflip(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Each (N, C, H, W) image flipped left-right with probability p, as the content augmentations do."""
    flip = (torch.rand(len(x), generator=generator) < p).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


def _probe_features(x: torch.Tensor) -> np.ndarray:
    """Fixed features of (N, C, H, W) images for the distinctiveness probe -> (N, D) float64."""
    n, c = x.shape[:2]
    small = _resize(x, PROBE_SIZE)
    gray = small.mean(1)
    # gradient magnitude: orientation cues a mean profile misses (edges above vs below)
    gy, gx = gray.diff(dim=1).abs(), gray.diff(dim=2).abs()
    bins = (x.clamp(0, 1) * (HIST_BINS - 1e-3)).long().flatten(2)  # (N, C, H*W)
    hist = torch.zeros(n, c, HIST_BINS).scatter_add_(2, bins, torch.ones_like(bins, dtype=torch.float32))
    hist /= bins.shape[-1]
    parts = [small.flatten(1), hist.flatten(1), gray.mean(2), gray.mean(1), gy.mean(2), gx.mean(1)]
    return torch.cat(parts, dim=1).double().numpy()


def _separability(features_x: np.ndarray, features_xc: np.ndarray) -> float:
    """Mean held-out AUROC of originals (0) vs copies (1), grouped so an image and its copy share a fold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    n = len(features_x)
    data = np.concatenate([features_x, features_xc])
    labels = np.repeat([0, 1], n)
    groups = np.tile(np.arange(n), 2)
    aurocs = []
    # one BLAS thread: these small problems are 10-25x slower when BLAS threads fight over busy cores
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs "not converged" on separable folds: the AUROC is already 1
        for train, test in GroupKFold(n_splits=min(FOLDS, n)).split(data, labels, groups):
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=300))
            probe.fit(data[train], labels[train])
            aurocs.append(roc_auc_score(labels[test], probe.decision_function(data[test])))
    return float(np.mean(aurocs))


def _random_net(channels: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """Seeded He-initialised 3x3 conv layers (weights, bias, stride): a fixed, untrained feature space."""
    g = torch.Generator().manual_seed(seed)
    layers, c_in = [], channels
    for c_out, stride in ((16, 1), (32, 2), (64, 2)):
        w = torch.randn(c_out, c_in, 3, 3, generator=g) * (2.0 / (c_in * 9)) ** 0.5
        b = 0.1 * torch.randn(c_out, generator=g)
        layers.append((w, b, stride))
        c_in = c_out
    return layers


@torch.no_grad()
def _embed(net: list[tuple[torch.Tensor, torch.Tensor, int]], x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """(N, C, 32, 32) in [0, 1] -> (N, 112) global-average-pooled activations of every layer.

    The caller resizes to EMBED_SIZE, so tiny digits still pass three layers and large images stay
    cheap (pooled statistics need no more resolution); inputs are scaled to [-1, 1] as for training.
    """
    out = []
    for chunk in x.split(batch):
        h = chunk * 2.0 - 1.0
        pooled = []
        for w, b, stride in net:
            h = F.relu(F.conv2d(h, w, b, stride=stride, padding=1))
            pooled.append(h.mean((2, 3)))
        out.append(torch.cat(pooled, 1))
    return torch.cat(out)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, size, size), antialiased bilinear.

    The filter is symmetric and linear with weights summing to 1, so resizing commutes with flips,
    90-degree rotations (square images), ``invert`` and ``permute``: pixel distances of the resized
    images keep those transforms' isometry.
    """
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def _standardise(z: torch.Tensor) -> torch.Tensor:
    """Per-feature z-score with the set's own statistics (dead units stay 0)."""
    return (z - z.mean(0)) / z.std(0).clamp_min(1e-8)


def _pair_distances(z: torch.Tensor) -> np.ndarray:
    """Euclidean distances of all pairs i < j of the rows of (N, D) ``z`` -> (N (N - 1) / 2,) float64.

    float64 keeps the distances of isometric transforms equal up to ~1e-12, so ties do not reorder.
    """
    i, j = torch.triu_indices(len(z), len(z), 1)
    return torch.cdist(z.double(), z.double())[i, j].numpy()


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:  # constant distances: no order to keep
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _reason(auroc: float, distinct: float, aligned: float) -> str:
    """One line a user can read: which assumption holds, with the measured value."""
    if distinct < NOT_DISTINCT:
        return f"not distinct: originals and copies are indistinguishable (AUROC {auroc:.2f})"
    d = f"distinct (AUROC {auroc:.2f})" if distinct >= 0.6 else f"weakly distinct (AUROC {auroc:.2f})"
    if np.isnan(aligned):
        return f"{d}; alignment not measurable (constant distances)"
    if aligned >= 0.8:
        return f"{d} and aligned (rho {aligned:.2f})"
    if aligned >= 0.5:
        return f"{d}, partly aligned (rho {aligned:.2f})"
    return f"{d} but not aligned: distances between images change (rho {aligned:.2f})"
