"""S_LH: Gaussian negative log-likelihood of L2-normalised features (eqs. 13-15).

Fit and score are batched matrix operations over row chunks (memory bounded for any number of
training features n and queries T): two passes accumulate the mean and the centred Gram matrix
(products in the features' precision, at least float32; sums, covariance, Cholesky factor and
scores in float64), the Cholesky factor replaces the inverse, and scoring is one triangular solve
per chunk.

The paper's S_LH (eq. 14) uses the plain empirical covariance (``shrinkage`` 0). Where that is
singular (fewer training images than feature dimensions, e.g. BreastMNIST's 399 against 512), the
smallest ridge that makes it invertible is added: the first of 0, 1e-12, 1e-11, ..., 1 (times
the mean variance trace(Sigma) / D) for which every fitted covariance is numerically full rank in
float64 (smallest eigenvalue above D * eps * the largest, numpy's ``matrix_rank`` tolerance). The
relative ridge is ``GaussianScorer.ridge`` (logged as the param ``lh_ridge``); with shrinkage > 0
the covariance is provably full rank and the ridge is 0 without an eigendecomposition.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# rows per chunk in fit and score: a (16384, D) temporary, 32 MB (float32) at D = 512
_ROWS = 16384
_RIDGES = (0.0,) + tuple(10.0**k for k in range(-12, 1))  # ridge ladder, relative to the mean variance
_EPS = torch.finfo(torch.float64).eps


def smallest_ridge(cov: torch.Tensor, shrinkage: float = 0.0) -> float:
    """The smallest ladder ridge r making every ``cov + r * mean_variance * I`` numerically invertible.

    Args:
        cov: float64 (..., D, D) symmetric positive semi-definite covariances.
        shrinkage: the shrinkage already applied to ``cov``; above D**2 * eps its eigenvalues are at
            least shrinkage * mean_variance >= shrinkage * lambda_max / D, so 0 is returned at once.

    Returns:
        r in :data:`_RIDGES`, relative to each covariance's mean variance trace / D (one r for all).
    """
    d = cov.shape[-1]
    tol = d * _EPS  # numpy.linalg.matrix_rank's relative tolerance
    if shrinkage > d * tol:
        return 0.0
    eig = torch.linalg.eigvalsh(cov)  # (..., D) ascending
    scale = _mean_variance(cov)[..., 0, 0]
    for ridge in _RIDGES:
        add = ridge * scale
        if bool(((eig[..., 0] + add) > tol * (eig[..., -1] + add)).all()):
            return ridge
    raise ValueError("no ridge up to the mean variance makes the S_LH covariance invertible (non-finite features?)")


class FittedStatistics(nn.Module):
    """A scorer whose statistics are buffers sized by ``fit``: they save with ``state_dict`` and move with
    ``.to(device)``, and a fresh (unfitted) scorer loads a fitted state of any shape."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # the empty buffers of an unfitted scorer take the saved shapes before loading
        for name in self._buffers:
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def shrunk(cov: torch.Tensor, shrinkage: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(1 - lambda) * Sigma + lambda * (trace(Sigma) / D) * I for (..., D, D) covariances.

    Returns:
        The shrunk covariance, the mean variance trace(Sigma) / D ((..., 1, 1), floored at 1e-12) and
        the identity, which ridges are scaled by.
    """
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    scale = _mean_variance(cov)
    return (1 - shrinkage) * cov + shrinkage * scale * eye, scale, eye


def mahalanobis_sq(cholesky: torch.Tensor, diff: torch.Tensor) -> torch.Tensor:
    """Squared Mahalanobis distances (..., T) of (..., T, D) differences from the mean, given the
    covariance's lower Cholesky factor (..., D, D): one triangular solve, no inverse."""
    y = torch.linalg.solve_triangular(cholesky, diff.mT, upper=False)
    return (y * y).sum(-2)


def _mean_variance(cov: torch.Tensor) -> torch.Tensor:
    """(..., 1, 1) trace / D, floored so that a zero covariance (identical features) still gets a ridge."""
    return cov.diagonal(dim1=-2, dim2=-1).mean(-1).clamp(min=1e-12)[..., None, None]


def _unit(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A new tensor of L2-normalised rows in ``dtype`` (the caller may modify it in place)."""
    z = x.to(dtype, copy=True)
    return z.div_(torch.linalg.vector_norm(z, dim=-1, keepdim=True).clamp_min_(1e-12))


class GaussianScorer(FittedStatistics):
    """Fits one multivariate Gaussian to normalised training features; scores by its NLL.

    The fitted statistics are buffers, so they travel with ``state_dict`` and ``.to(device)``.
    Features may carry leading batch dimensions (e.g. (V, n, D) for V test-time augmentations):
    one Gaussian is fitted per leading index, all with batched matrix operations.

    Args:
        shrinkage: lambda in [0, 1]; the covariance used is (1 - lambda) * Sigma +
            lambda * (trace(Sigma) / D) * I. Helpful for small n; 0 gives the plain empirical
            covariance of eq. 14 (plus the smallest invertible ridge where it is singular).
    """

    def __init__(self, shrinkage: float = 0.1) -> None:
        super().__init__()
        if not 0 <= shrinkage <= 1:
            raise ValueError(f"shrinkage={shrinkage!r} must lie in [0, 1]")
        self.shrinkage = shrinkage
        self.ridge = 0.0  # set by fit: not a buffer, the Cholesky factor already holds it
        self.register_buffer("mean", torch.empty(0))
        self.register_buffer("cholesky", torch.empty(0))
        self.register_buffer("log_det", torch.empty(0))

    def fit(self, train_features: torch.Tensor) -> GaussianScorer:
        """Estimates mean and (shrunk) covariance; sets ``ridge``.

        Args:
            train_features: (..., n, D) features of normal training images, n >= 2.

        Returns:
            self.
        """
        n, d = train_features.shape[-2:]
        if n < 2:
            raise ValueError(f"GaussianScorer needs at least 2 training features, got {n}")
        # two passes over row chunks (memory bounded for any n): the mean, then the Gram matrix of the
        # centred rows. The products run in the features' precision (float32 for encoder features:
        # twice float64's speed; centring first leaves only rounding, far below the sampling error of
        # a covariance) and are summed across chunks in float64.
        work = torch.promote_types(train_features.dtype, torch.float32)
        total = torch.zeros(*train_features.shape[:-2], 1, d, dtype=torch.float64, device=train_features.device)
        for chunk in train_features.split(_ROWS, dim=-2):
            total += _unit(chunk, work).sum(dim=-2, keepdim=True).double()  # (a float64 sum is 10x slower on CPU)
        mean = total / n
        gram = torch.zeros(*total.shape[:-2], d, d, dtype=torch.float64, device=total.device)
        for chunk in train_features.split(_ROWS, dim=-2):
            z = _unit(chunk, work).sub_(mean.to(work))
            gram += (z.mT @ z).double()
        mean = mean.squeeze(-2)
        cov = gram / (n - 1)
        cov, scale, eye = shrunk(cov, self.shrinkage)
        # eq. 14's plain covariance is singular for n <= D: the smallest ridge that makes it invertible
        start = _RIDGES.index(smallest_ridge(cov, self.shrinkage))
        for self.ridge in _RIDGES[start:]:  # at the rank tolerance's edge Cholesky may still fail: one step up
            chol, info = torch.linalg.cholesky_ex(cov + self.ridge * scale * eye)
            if not bool(info.any()):
                break
        else:
            raise ValueError("the S_LH covariance is not positive definite with any ridge (non-finite features?)")
        self.mean = mean
        self.cholesky = chol
        self.log_det = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return self

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """Negative log-density; higher = more anomalous.

        Args:
            features: (..., T, D) features, leading dimensions matching those seen by ``fit``.

        Returns:
            (..., T) float32 scores.
        """
        if self.mean.numel() == 0:
            raise RuntimeError("GaussianScorer.score called before fit")
        d = features.shape[-1]
        out = []
        for chunk in features.split(_ROWS, dim=-2):  # bounded memory for any T
            z = F.normalize(chunk.to(self.mean.dtype), dim=-1) - self.mean.unsqueeze(-2)
            maha = mahalanobis_sq(self.cholesky, z)
            out.append((0.5 * (maha + self.log_det.unsqueeze(-1) + d * math.log(2 * math.pi))).float())
        return torch.cat(out, dim=-1) if out else features.new_zeros(features.shape[:-1], dtype=torch.float32)
