"""Baseline anomaly scores on encoder features, and what the scores cost.

The floor every learned score is shown against, raw-pixel cosine 1-NN, is a score of the method
(:func:`con2lib.method.scores.pixel_knn_scores`): every evaluation computes it. SSD (Sehwag et al.,
2021) clusters the normalised features of normal training images with k-means and scores a sample by
its Mahalanobis distance to the closest cluster. On features of a SimCLR-trained encoder
(``loss=simclr``) it is the paper's SSD baseline; on CON2 features it is one more score to compare
with S_NND and S_LH. :func:`time_scores` measures the runtime and memory of S_NND and S_LH as the
paper's appendix E.3 does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans

from con2lib.method.scores.gaussian import FittedStatistics, mahalanobis_sq, shrunk


class SSDScorer(FittedStatistics):
    """k-means clusters of normal features, each with a mean and a shrunk covariance.

    The fitted statistics are buffers, so they travel with ``state_dict`` and ``.to(device)``.
    Features may carry one leading dimension of V test-time augmentations ((V, n, D)): clusters are
    then fitted per view, as :class:`con2lib.method.scores.GaussianScorer` does.

    Args:
        shrinkage: lambda in [0, 1]; each cluster's covariance is (1 - lambda) * Sigma_k +
            lambda * (trace(Sigma_k) / D) * I. Clusters with fewer than D points have a singular
            Sigma_k, so lambda > 0 is the practical choice; 0 gives the plain covariance.
    """

    def __init__(self, shrinkage: float = 0.1) -> None:
        super().__init__()
        if not 0 <= shrinkage <= 1:
            raise ValueError(f"shrinkage={shrinkage!r} must lie in [0, 1]")
        self.shrinkage = shrinkage
        self.register_buffer("means", torch.empty(0))
        self.register_buffer("cholesky", torch.empty(0))

    @property
    def n_clusters(self) -> int:
        """Number of fitted clusters (0 before ``fit``)."""
        return 0 if self.means.numel() == 0 else self.means.shape[-2]

    def fit(self, train_features: torch.Tensor, n_clusters: int = 1, seed: int = 0) -> SSDScorer:
        """Clusters the L2-normalised features and estimates each cluster's mean and covariance.

        Args:
            train_features: (n, D) or (V, n, D) features of normal training images.
            n_clusters: k of k-means (1 = one Gaussian, i.e. Mahalanobis distance to the mean).
            seed: k-means initialisation seed.

        Returns:
            self.
        """
        squeeze = train_features.ndim == 2
        z = F.normalize(train_features.double(), dim=-1)
        z = z.unsqueeze(0) if squeeze else z
        n, d = z.shape[-2:]
        if n < n_clusters or n_clusters < 1:
            raise ValueError(f"n_clusters={n_clusters} must lie in [1, n={n}]")
        means, chols = [], []
        for view in z:  # k-means is per view: each view has its own geometry
            labels = self._cluster(view, n_clusters, seed)
            for k in range(n_clusters):
                members = view[labels == k]
                mean = members.mean(0)
                centred = members - mean
                # a single-point cluster has no spread: the floor below keeps it usable, if sharp
                cov = centred.T @ centred / max(len(members) - 1, 1)
                cov, scale, eye = shrunk(cov, self.shrinkage)
                cov = cov + 1e-9 * scale * eye
                means.append(mean)
                chols.append(torch.linalg.cholesky(cov))
        self.means = torch.stack(means).reshape(len(z), n_clusters, d)
        self.cholesky = torch.stack(chols).reshape(len(z), n_clusters, d, d)
        if squeeze:
            self.means, self.cholesky = self.means[0], self.cholesky[0]
        return self

    @staticmethod
    def _cluster(z: torch.Tensor, n_clusters: int, seed: int) -> torch.Tensor:
        if n_clusters == 1:
            return torch.zeros(len(z), dtype=torch.long, device=z.device)
        km = KMeans(n_clusters=n_clusters, random_state=seed, n_init=10).fit(z.cpu().numpy())
        return torch.as_tensor(km.labels_.astype(np.int64), device=z.device)

    def score(self, features: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """Smallest Mahalanobis distance to any cluster; higher = more anomalous.

        Args:
            features: (T, D) or (V, T, D) features, leading dimension matching ``fit``'s.
            chunk: test rows per block (memory grows as V * k * chunk * D).

        Returns:
            (T,) or (V, T) float32 distances (not squared).
        """
        if self.means.numel() == 0:
            raise RuntimeError("SSDScorer.score called before fit")
        z = F.normalize(features.to(self.means.dtype), dim=-1)
        if z.shape[-2] == 0:
            return z.new_zeros(z.shape[:-1], dtype=torch.float32)
        out = []
        for block in z.split(chunk, dim=-2):
            diff = block.unsqueeze(-3) - self.means.unsqueeze(-2)  # (..., k, t, D)
            out.append(mahalanobis_sq(self.cholesky, diff).amin(-2).sqrt())
        return torch.cat(out, dim=-1).float()


def time_scores(n_values: Sequence[int], d: int, batches: Sequence[int], batch_size: int,
                device: str | torch.device = "cpu", *, n_fixed: int = 10000, batches_fixed: int = 10,
                repeats: int = 3, shrinkage: float = 0.1, seed: int = 0) -> pd.DataFrame:
    """Runtime and memory of S_NND and S_LH (paper appendix E.3, Figure 10) on random features.

    Two sweeps: ``sweep="n"`` grows the number n of training features with ``batches_fixed``
    scored batches; ``sweep="batches"`` grows the number of scored batches with ``n_fixed``
    training features. Each batch holds ``batch_size`` (batch_size, d) test features and is scored
    with one call, as an online detector would.

    Returns:
        One row per sweep, score and setting: sweep, score ("S_NND" / "S_LH"), n, batches,
        batch_size, d, fit_s (S_LH: fitting the Gaussian; S_NND: 0, the bank is stored as is),
        score_s, total_s (median over ``repeats``), stored_bytes (what the score keeps between
        batches: the float32 bank n*d*4 for S_NND, the float64 mean and Cholesky factor
        (d*d + d + 1)*8 for S_LH), peak_bytes (CUDA only: torch.cuda.max_memory_allocated above the
        inputs during fit and scoring; NaN on other devices). S_LH needs n >= 2: NaN times below.
    """
    from con2lib.method.device import select_device
    from con2lib.method.scores import GaussianScorer, nnd_score

    dev = select_device(device) if isinstance(device, str) else device
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(batch_size, d, generator=gen).to(dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def once(score: str, bank: torch.Tensor, n_batches: int) -> tuple[float, float]:
        sync()
        start = time.perf_counter()
        if score == "S_LH":
            scorer = GaussianScorer(shrinkage).fit(bank)
            sync()
        fitted = time.perf_counter()
        for _ in range(n_batches):
            if score == "S_LH":
                scorer.score(query)
            else:
                nnd_score(query, bank)
        sync()
        return (fitted - start if score == "S_LH" else 0.0), time.perf_counter() - fitted

    rows = []
    settings = [("n", n, batches_fixed) for n in n_values] + [("batches", n_fixed, b) for b in batches]
    for sweep, n, n_batches in settings:
        bank = torch.randn(n, d, generator=gen).to(dev)
        for score in ("S_NND", "S_LH"):
            row = {"sweep": sweep, "score": score, "n": n, "batches": n_batches, "batch_size": batch_size, "d": d,
                   "stored_bytes": n * d * 4 if score == "S_NND" else (d * d + d + 1) * 8}
            if score == "S_LH" and n < 2:
                rows.append({**row, "fit_s": np.nan, "score_s": np.nan, "total_s": np.nan, "peak_bytes": np.nan})
                continue
            once(score, bank, 1)  # warm-up: kernels, allocator and BLAS initialise outside the timing
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
                base = torch.cuda.memory_allocated(dev)
            times = np.array([once(score, bank, n_batches) for _ in range(repeats)])
            peak = torch.cuda.max_memory_allocated(dev) - base if dev.type == "cuda" else np.nan
            fit_s, score_s = np.median(times, axis=0)
            rows.append({**row, "fit_s": fit_s, "score_s": score_s, "total_s": float(np.median(times.sum(1))),
                         "peak_bytes": peak})
    return pd.DataFrame(rows)
