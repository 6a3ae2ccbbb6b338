"""S_NND: nearest-neighbour cosine distance to the normal training features (eq. 12)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nnd_score(
    test_features: torch.Tensor,
    train_features: torch.Tensor,
    query_chunk: int = 4096,
    bank_chunk: int = 65536,
) -> torch.Tensor:
    """Minus the largest cosine similarity of each test feature to any training feature.

    Exact, computed in (query_chunk x bank_chunk) blocks so memory stays bounded for any number of
    training features n and queries T. The bank may be stored in half precision; products are
    accumulated in the bank's dtype and the result returned in float32.

    Args:
        test_features: (T, D) encoder features of test images under one augmentation t.
        train_features: (n, D) encoder features of the normal training images under the same t.
        query_chunk: test rows per block.
        bank_chunk: training rows per block.

    Returns:
        (T,) float32 scores on the features' device; higher = more anomalous.
    """
    bank = F.normalize(train_features, dim=1)
    out = []
    for q in test_features.split(query_chunk):
        q = F.normalize(q.to(bank.dtype), dim=1)
        best = torch.full((len(q),), float("-inf"), device=q.device, dtype=torch.float32)
        for b in bank.split(bank_chunk):
            best = torch.maximum(best, (q @ b.T).amax(dim=1).float())
        out.append(-best)
    return torch.cat(out) if out else test_features.new_zeros(0, dtype=torch.float32)


def nnd_index(test_features: torch.Tensor, train_features: torch.Tensor, query_chunk: int = 4096) -> torch.Tensor:
    """(T,) index of each test feature's nearest training feature by cosine similarity."""
    bank = F.normalize(train_features, dim=1)
    return torch.cat([(F.normalize(q.to(bank.dtype), dim=1) @ bank.T).argmax(dim=1)
                      for q in test_features.split(query_chunk)])
