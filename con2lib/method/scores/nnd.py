"""S_NND: nearest-neighbour cosine distance to the normal training features (eq. 12).

Exact and blocked: the bank is walked in chunks of ``bank_chunk`` rows (each normalised once) and
the queries in chunks of ``query_chunk`` rows, so the largest temporary is one
(query_chunk x bank_chunk) similarity block, written into one reused buffer. Extra memory is
O(T D + bank_chunk D + query_chunk bank_chunk), independent of the bank size n; the time is
that of the 2 n T D flops of matrix products (measured at 70-90% of a large float32 matmul's rate
on 2 CPU cores, ``benchmarks/scores.py``).

The bank may be stored in half precision (float16 / bfloat16, e.g. on a GPU): each chunk is
normalised in float32 and multiplied in the bank's dtype, and the result is float32. For banks
that do not fit in memory at all, see :mod:`con2lib.method.scores.ann`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# (query_chunk, bank_chunk): a 64 MB float32 block on CPU (fastest of the shapes measured on 2 cores,
# 70-90% of matmul peak); on GPUs larger blocks keep the kernels long enough to hide launch overhead
_CHUNKS = {"cpu": (2048, 8192), "cuda": (4096, 32768)}


def _chunks(device: torch.device, query_chunk: int | None, bank_chunk: int | None) -> tuple[int, int]:
    q, b = _CHUNKS.get(device.type, _CHUNKS["cpu"])
    return query_chunk or q, bank_chunk or b


def _normalized(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Unit rows in ``dtype``; the norm is taken in float32 at least (half-precision squares overflow)."""
    work = torch.promote_types(x.dtype, torch.float32)
    return F.normalize(x.to(work), dim=1).to(dtype)


@torch.no_grad()
def nnd_score(
    test_features: torch.Tensor,
    train_features: torch.Tensor,
    query_chunk: int | None = None,
    bank_chunk: int | None = None,
) -> torch.Tensor:
    """Minus the largest cosine similarity of each test feature to any training feature.

    Exact, computed in (query_chunk x bank_chunk) blocks so memory stays bounded for any number of
    training features n and queries T. The bank may be stored in half precision; products are
    computed in the bank's dtype and the result returned in float32.

    Args:
        test_features: (T, D) encoder features of test images under one augmentation t.
        train_features: (n, D) encoder features of the normal training images under the same t.
        query_chunk: test rows per block (None: by device, 2048 on CPU).
        bank_chunk: training rows per block (None: by device, 8192 on CPU).

    Returns:
        (T,) float32 scores on the features' device; higher = more anomalous.
    """
    best, _ = _nearest(test_features, train_features, query_chunk, bank_chunk, want_index=False)
    return -best


def nnd_score_views(test_features: torch.Tensor, train_features: torch.Tensor) -> torch.Tensor:
    """S_NND averaged over test-time views (eq. 16): each view's test features against that view's bank.

    Args:
        test_features: (A, T, D) features of the test images under each of A views.
        train_features: (A, n, D) features of the training images under the same views.

    Returns:
        (T,) float32 scores on the features' device.
    """
    return torch.stack([nnd_score(test, bank) for test, bank in zip(test_features, train_features, strict=True)]).mean(0)


@torch.no_grad()
def nnd_index(test_features: torch.Tensor, train_features: torch.Tensor, query_chunk: int | None = None,
              bank_chunk: int | None = None) -> torch.Tensor:
    """(T,) int64 index of each test feature's nearest training feature by cosine similarity (blocked as
    :func:`nnd_score`; ties go to the lowest index)."""
    _, index = _nearest(test_features, train_features, query_chunk, bank_chunk, want_index=True)
    return index


def _nearest(test: torch.Tensor, train: torch.Tensor, query_chunk: int | None, bank_chunk: int | None,
             want_index: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Largest cosine similarity (T,) float32 and, if asked, its bank index (T,) int64."""
    dtype = train.dtype
    device = test.device
    qc, bc = _chunks(device, query_chunk, bank_chunk)
    t = len(test)
    best = torch.full((t,), float("-inf"), device=device, dtype=torch.float32)
    index = torch.zeros(t, dtype=torch.long, device=device) if want_index else None
    if t == 0:
        return best, index
    queries = torch.cat([_normalized(q, dtype) for q in test.split(qc)])
    block = torch.empty(min(qc, t), min(bc, max(len(train), 1)), device=device, dtype=dtype)
    for start in range(0, len(train), bc):
        bank = _normalized(train[start:start + bc], dtype)
        for s in range(0, t, qc):
            q = queries[s:s + qc]
            sims = block[:len(q), :len(bank)]
            torch.mm(q, bank.T, out=sims)  # into the reused buffer: no allocation per block
            if want_index:
                value, arg = sims.max(dim=1)
                value = value.float()
                better = value > best[s:s + qc]  # strict: earlier chunks win ties
                index[s:s + qc] = torch.where(better, arg + start, index[s:s + qc])
                best[s:s + qc] = torch.where(better, value, best[s:s + qc])
            else:
                torch.maximum(best[s:s + qc], sims.amax(dim=1).float(), out=best[s:s + qc])
    return best, index
