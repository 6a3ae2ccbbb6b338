"""Turning scores into decisions: a threshold at a target false-positive rate, set on held-out normal images.

An anomaly score has no natural cut-off, so the threshold is calibrated on normal images the model
never trained on: a seeded fraction (``calibration_fraction``) of the normal training images is held
out before training, scored like test images, and the threshold is the ``1 - target_fpr`` quantile
of their scores. On new normal images about ``target_fpr`` of them then score above it (flagged in
error); the test set's achieved false- and true-positive rates at that threshold are logged with the run.

Without held-out images (``calibration_fraction`` 0, or fewer than :data:`MIN_NORMAL` normal
images) the S_NND threshold falls back to the training bank's leave-one-out S_NND scores (each
training image scored against all the others): a usable but optimistic estimate, since the
encoder has seen those images. S_LH has no such fallback.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from con2lib.data.base import OneClassData

MIN_NORMAL = 10  # fewer normal training images: too few to hold any out for a quantile
# Held-out images expected above the threshold for a usable FPR: with fewer, its 90% range spans
# more than about half to one and a half times the target
MIN_EXPECTED_ABOVE = 10
_SALT = 0xCA11B  # separates this stream from subsample()'s, which is seeded with the same split_seed
_ROWS = 2048  # bank rows per block of the leave-one-out similarities: (2048, n) float32 temporaries


class CalibrationWarning(UserWarning):
    """Calibration was skipped; the threshold comes from the fallback (see the module docstring)."""


def split_calibration(data: OneClassData, fraction: float, seed: int) -> tuple[OneClassData, torch.Tensor]:
    """Holds a seeded fraction of the normal training images out of training, for calibration.

    Args:
        data: the loaded split; ``data.train`` uint8 (N, C, H, W).
        fraction: share of the N images held out, in [0, 0.5); 0 holds out none.
        seed: ``split_seed``: the held-out images do not change with the training seed.

    Returns:
        ``data`` with ``train`` reduced to the N - K remaining images (order kept; ``info`` gains
        ``n_train``, ``n_calibration``, ``calibration_fraction``), and the K held-out images, uint8
        (K, C, H, W), K = max(1, round(fraction * N)); K = 0 (with a :class:`CalibrationWarning`)
        when ``fraction`` is 0 or N < :data:`MIN_NORMAL`.
    """
    if not 0 <= fraction < 0.5:
        raise ValueError(f"calibration fraction {fraction!r} must lie in [0, 0.5)")
    n = len(data.train)
    k = 0 if fraction == 0 or n < MIN_NORMAL else max(1, round(fraction * n))
    if k == 0:
        why = "calibration_fraction is 0" if fraction == 0 else f"only {n} normal training images (< {MIN_NORMAL})"
        warnings.warn(f"threshold calibration skipped ({why}): no held-out normal images; the S_NND threshold "
                      "falls back to the training images' leave-one-out scores (optimistic)",
                      CalibrationWarning, stacklevel=2)
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng([seed, _SALT]).permutation(n)[:k]] = True
    keep = torch.from_numpy(~held)
    info = {**data.info, "n_train": n - k, "n_calibration": k, "calibration_fraction": fraction}
    ids = tuple(i for i, out in zip(data.train_ids, held) if not out)
    return dataclasses.replace(data, train=data.train[keep], info=info, train_ids=ids), data.train[torch.from_numpy(held)]


def threshold_at_fpr(normal_scores: torch.Tensor | np.ndarray, target_fpr: float) -> float:
    """The ``1 - target_fpr`` quantile (linear interpolation) of normal images' scores.

    Scores above it are anomalous, so about ``target_fpr`` of the normal images lie above it.

    Args:
        normal_scores: (K,) scores of held-out normal images, K >= 1; higher = more anomalous.
        target_fpr: in (0, 1).
    """
    scores = np.asarray(normal_scores, dtype=np.float64).reshape(-1)
    if not 0 < target_fpr < 1:
        raise ValueError(f"target_fpr {target_fpr!r} must lie in (0, 1)")
    if scores.size == 0 or not np.isfinite(scores).all():
        raise ValueError(f"a threshold needs at least one score, all finite; got {scores.size} score(s)")
    return float(np.quantile(scores, 1 - target_fpr))


def fpr_beta(n_calibration: int, target_fpr: float) -> tuple[float, float]:
    """Parameters (a, b) of the Beta distribution of the FPR on new normal images of
    :func:`threshold_at_fpr` on ``n_calibration`` held-out scores.

    The linear quantile sits at order statistic r = 1 + (n - 1)(1 - target_fpr) of the n scores; the share
    of new normal scores above the r-th smallest of n is Beta(n + 1 - r, r) (continuous scores). Its mean
    a / (n + 1) exceeds the target for small n.
    """
    a = 1 + (n_calibration - 1) * target_fpr
    return a, n_calibration + 1 - a


def fpr_range(n_calibration: int, target_fpr: float, level: float = 0.9) -> tuple[float, float]:
    """The central ``level`` interval of the FPR on new normal images (:func:`fpr_beta`)."""
    from scipy.stats import beta

    low, high = beta.ppf([(1 - level) / 2, (1 + level) / 2], *fpr_beta(n_calibration, target_fpr))
    return float(low), float(high)


def small_calibration_warning(n_calibration: int, target_fpr: float) -> str | None:
    """A warning when ``n_calibration`` held-out images are too few for ``target_fpr``, else None."""
    if n_calibration <= 0 or n_calibration * target_fpr >= MIN_EXPECTED_ABOVE:
        return None
    a, b = fpr_beta(n_calibration, target_fpr)
    low, high = fpr_range(n_calibration, target_fpr)
    return (f"the threshold was calibrated on {n_calibration} normal images for a target FPR of {target_fpr:g}: "
            f"on new normal images its FPR averages {a / (a + b):.3f} and lies in {low:.3f}-{high:.3f} (90% range); "
            f"hold out at least {int(np.ceil(MIN_EXPECTED_ABOVE / target_fpr))} normal images "
            "(calibration_fraction) for a stable one")


def rates(labels: torch.Tensor | np.ndarray, scores: torch.Tensor | np.ndarray,
          threshold: float) -> tuple[float, float]:
    """False- and true-positive rates of the decision ``score > threshold``.

    Args:
        labels: (T,) 1 = anomaly, 0 = normal.
        scores: (T,) higher = more anomalous.

    Returns:
        (fpr, tpr): the shares of normal and of anomalous images flagged; NaN where a kind is absent.
    """
    y = np.asarray(labels).reshape(-1).astype(bool)
    flagged = np.asarray(scores, dtype=np.float64).reshape(-1) > threshold
    fpr = float(flagged[~y].mean()) if (~y).any() else float("nan")
    tpr = float(flagged[y].mean()) if y.any() else float("nan")
    return fpr, tpr


@torch.no_grad()
def loo_nnd_scores(bank: torch.Tensor) -> torch.Tensor:
    """Leave-one-out S_NND of the training bank: each image against all the others, averaged over views.

    Args:
        bank: float (V, n, F) training features per test-time view, n >= 2.

    Returns:
        (n,) float32 scores on the CPU, comparable to test images' S_NND.
    """
    views, n, _ = bank.shape
    if n < 2:
        raise ValueError("leave-one-out scores need at least 2 training images")
    total = torch.zeros(n, dtype=torch.float32)
    for v in range(views):
        unit = F.normalize(bank[v].float(), dim=1)
        for start in range(0, n, _ROWS):
            sims = unit[start:start + _ROWS] @ unit.T
            rows = torch.arange(sims.shape[0], device=sims.device)
            sims[rows, rows + start] = float("-inf")  # an image is not its own neighbour
            total[start:start + len(rows)] -= sims.amax(dim=1).cpu()
    return total / views
