"""Anomaly scores on encoder features: S_NND (eq. 12) and S_LH (eqs. 13-15)."""

from con2lib.scores.gaussian import GaussianScorer
from con2lib.scores.nnd import nnd_index, nnd_score

__all__ = ["GaussianScorer", "nnd_index", "nnd_score"]
