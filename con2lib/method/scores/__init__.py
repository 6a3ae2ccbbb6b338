"""Anomaly scores on encoder features: S_NND (eq. 12; exact, or approximate with faiss) and S_LH
(eqs. 13-15); and the raw-pixel floor (S_NND on pixels)."""

from con2lib.method.scores.ann import ann_nnd_score
from con2lib.method.scores.gaussian import GaussianScorer
from con2lib.method.scores.nnd import nnd_index, nnd_score, nnd_score_views
from con2lib.method.scores.pixels import pixel_knn_scores

__all__ = ["GaussianScorer", "ann_nnd_score", "nnd_index", "nnd_score", "nnd_score_views", "pixel_knn_scores"]
