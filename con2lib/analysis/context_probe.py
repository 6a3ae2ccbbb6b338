"""What the context check measures with: a linear probe on fixed image features, and an untrained network.

:mod:`con2lib.analysis.contexts` combines these into its ranking; they are kept apart so that each measure can be
read and tested on its own. Every function is deterministic given its seed and runs on the CPU in
seconds for the check's 500 images.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

PROBE_SIZE = 16  # side of the downsampled images the distinctiveness probe sees
HIST_BINS = 32
FOLDS = 5
EMBED_SIZE = 32  # side of the images the alignment measures see (random features and pixels)


def probe_features(x: torch.Tensor) -> np.ndarray:
    """Fixed features of (N, C, H, W) images for the distinctiveness probe -> (N, D) float64."""
    small = resize(x, PROBE_SIZE)
    gray = small.mean(1)
    # gradient magnitude: orientation cues a mean profile misses (edges above vs below)
    gy, gx = gray.diff(dim=1).abs(), gray.diff(dim=2).abs()
    parts = [small.flatten(1), _histogram(x).flatten(1), gray.mean(2), gray.mean(1), gy.mean(2), gx.mean(1)]
    return torch.cat(parts, dim=1).double().numpy()


def global_features(x: torch.Tensor) -> np.ndarray:
    """Global intensity statistics of (N, C, H, W) images: per channel a 32-bin histogram, the mean and the
    standard deviation -> (N, C * 34) float64. Blind to where anything is: every rotation, flip or
    permutation of the pixels leaves them unchanged, to the last bit: the moments are summed over the
    sorted pixel values, so a rotated copy's come out identical and its probe AUROC is exactly 0.5."""
    values = x.flatten(2).sort(dim=-1).values.double()  # summation order independent of the layout
    return torch.cat([_histogram(x).flatten(1).double(), values.mean(-1), values.std(-1)], dim=1).numpy()


def _histogram(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> (N, C, HIST_BINS) share of the pixels in each intensity bin."""
    n, c = x.shape[:2]
    bins = (x.clamp(0, 1) * (HIST_BINS - 1e-3)).long().flatten(2)  # (N, C, H*W)
    hist = torch.zeros(n, c, HIST_BINS).scatter_add_(2, bins, torch.ones_like(bins, dtype=torch.float32))
    return hist / bins.shape[-1]


def separability(features_x: np.ndarray, features_xc: np.ndarray) -> float:
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


def nn_embedding(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C * 16 * 16): the image at 16x16, mean-centred and of unit length, so that a dot
    product is the cosine similarity S_NND uses (here of the centred pixels: their correlation)."""
    z = resize(x, PROBE_SIZE).flatten(1)
    return F.normalize(z - z.mean(1, keepdim=True), dim=1)


def novelty(originals: torch.Tensor, copies: torch.Tensor) -> float:
    """Assumption 1 (eq. 9) as a nearest-neighbour score sees it: do copies look like normal images?

    Leave one out: image i and its copy are each scored by their cosine distance to the nearest of the
    *other* normal images (every image but i), so that all images serve as bank and as queries.

    Args:
        originals: (N, D) :func:`nn_embedding` of normal images (one context); copies: (N, D) the same
            images in another context, in the same order.

    Returns:
        AUROC of the copies (1) against the originals (0): 1 = no copy is as close to a normal image as
        a normal image is; 0.5 = the copies look like normal images (a digit 8 upside down is an 8).
    """
    from sklearn.metrics import roc_auc_score

    others = ~torch.eye(len(originals), dtype=torch.bool)
    similar = torch.stack([originals @ originals.T, copies @ originals.T]).masked_fill(~others, -2.0)
    scores = 1 - similar.max(2).values.flatten()  # [originals, copies]
    labels = np.repeat([0, 1], len(originals))
    return float(roc_auc_score(labels, scores.double().numpy()))


def random_net(channels: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
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
def embed(net: list[tuple[torch.Tensor, torch.Tensor, int]], x: torch.Tensor, batch: int = 256) -> torch.Tensor:
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


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, size, size), antialiased bilinear.

    The filter is symmetric and linear with weights summing to 1, so resizing commutes with flips,
    90-degree rotations (square images), ``invert`` and ``permute``: pixel distances of the resized
    images keep those transforms' isometry.
    """
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def standardise(z: torch.Tensor) -> torch.Tensor:
    """Per-feature z-score with the set's own statistics (dead units stay 0)."""
    return (z - z.mean(0)) / z.std(0).clamp_min(1e-8)


def pair_distances(z: torch.Tensor) -> np.ndarray:
    """Euclidean distances of all pairs i < j of the rows of (N, D) ``z`` -> (N (N - 1) / 2,) float64.

    float64 keeps the distances of isometric transforms equal up to ~1e-12, so ties do not reorder.
    """
    i, j = torch.triu_indices(len(z), len(z), 1)
    return torch.cdist(z.double(), z.double())[i, j].numpy()


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:  # constant distances: no order to keep
        return float("nan")
    return float(spearmanr(a, b).statistic)


__all__ = ["EMBED_SIZE", "embed", "global_features", "nn_embedding", "novelty", "pair_distances", "probe_features",
           "random_net", "resize", "separability", "spearman", "standardise"]
