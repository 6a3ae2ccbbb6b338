"""The raw-pixel floor: cosine 1-NN distance on pixels (S_NND of eq. 12 with g the identity)."""

from __future__ import annotations

import torch

from con2lib.method.scores.nnd import nnd_score

_PIXEL_BLOCK_BYTES = 256 << 20  # float32 rows converted at a time: bounded memory even for 224 px images


def pixel_knn_scores(train: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """The simplest baseline: raw-pixel cosine 1-NN distance (S_NND of eq. 12 with g the identity).

    uint8 images are converted to float in blocks of about 256 MB (both sides), so a 224 px data set
    never holds a float copy of all its pixels.

    Args:
        train: uint8 (n, C, H, W) normal training images (the run's own bank).
        test: uint8 (T, C, H, W) images to score.

    Returns:
        float32 (T,) scores, higher = more anomalous. A method that scores below this on the same
        split has learned less about the normal class than its pixels already tell.
    """
    rows = max(64, _PIXEL_BLOCK_BYTES // (4 * max(1, train[0].numel())))
    flat = lambda x: x.flatten(1).float()  # noqa: E731
    scores = [torch.stack([nnd_score(flat(q), flat(b)) for b in train.split(rows)]).amin(0) for q in test.split(rows)]
    return torch.cat(scores) if scores else torch.zeros(0)
