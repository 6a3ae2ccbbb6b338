"""The learning signal: how much each CON2 loss term still teaches the encoder.

A loss term at its optimum puts no gradient on the encoder, whatever its value; a context that is
distinct through global intensity alone (``invert``: after normalisation the copy is ``-x``, and the
first convolution has no bias) is separated at the first layer within a few epochs, after which
L_context teaches nothing and CON2 is SimCLR with the context copy as an extra positive.
:func:`term_gradients` measures the signal of each term at every step (``grad_context``,
``grad_content`` in the progress line and in MLflow); :func:`warn_if_context_solved` warns once when the
context term's signal collapses early.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from con2lib.config import Config

# the context term's gradient below this share of its first-epoch value, within the first quarter of
# training, means the context task is solved (measured: invert falls 100-1000x, rot90 stays within 3x)
SOLVED_RATIO = 0.01


class ContextSolvedWarning(UserWarning):
    """L_context stopped putting a gradient on the encoder early in training: the context teaches nothing more."""


def term_gradients(features: torch.Tensor, terms: tuple[torch.Tensor, ...],
                   reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The learning signal each loss term puts on the encoder.

    For a term L (a mean over the V views) and the encoder's features H (V, F): the root mean square
    over views of the gradient of the summed term V * L with respect to each view's features,
    ``sqrt(mean_i ||V dL/dh_i||^2) = sqrt(V) * ||dL/dH||_F``, independent of the batch size. Computed
    through the heads only (the graph is kept for the training step's backward): a few percent of a
    step (docs/benchmarks.md, "Learning signal").

    Args:
        features: (V, F) encoder features of the step's views, part of the graph of ``terms``.
        terms: scalar loss terms; one that does not depend on ``features`` (L_context of the SimCLR
            baseline) gives 0.
        reduce: under DDP, a sum over the ranks (:meth:`con2lib.method.distributed.Group.sum`): ``features``
            are then this rank's views, and the result is that of the whole batch.

    Returns:
        (len(terms),) float32 gradient sizes, detached, on the features' device.
    """
    parts = []
    for term in terms:
        grad = torch.autograd.grad(term, features, retain_graph=True, allow_unused=True)[0] \
            if term.requires_grad else None
        parts.append(features.new_zeros((), dtype=torch.float32) if grad is None else grad.float().pow(2).sum())
    parts += [features.new_tensor(float(len(features)), dtype=torch.float32), features.new_ones((), dtype=torch.float32)]
    sums = torch.stack(parts).detach()
    if reduce is not None:
        sums = reduce(sums)
    # under DDP every rank's loss is the whole batch's, and the differentiable all-gather sums the ranks'
    # gradients (DDP's mean makes it right for the weights): each rank's dL/dH is ranks times too large
    views, ranks = sums[-2], sums[-1]
    return (sums[:-2] * views).sqrt() / ranks


def context_solved(cfg: Config, history: list[Any], epochs: int) -> Any | None:
    """The first epoch in the first quarter of training whose context gradient fell below SOLVED_RATIO
    of the first epoch's, or None (also for losses without a context term to train)."""
    if cfg.loss not in ("con2", "context_only") or not history or not history[0].grad_context > 0:
        return None
    first = history[0].grad_context
    return next((h for h in history if h.epoch <= max(1, epochs // 4) and h.grad_context < SOLVED_RATIO * first),
                None)


def warn_if_context_solved(cfg: Config, history: list[Any], epochs: int) -> bool:
    """Warns once (:class:`ContextSolvedWarning`) when :func:`context_solved` finds an epoch; True if it did."""
    solved = context_solved(cfg, history, epochs)
    if solved is not None:
        warnings.warn(ContextSolvedWarning(
            f"the context task is solved: this context no longer teaches the encoder (L_context's gradient on the "
            f"encoder fell to {solved.grad_context / history[0].grad_context:.2%} of its first-epoch value by epoch "
            f"{solved.epoch} of {epochs}; context {cfg.context!r}). A context distinct through intensity alone "
            "(invert, equalize) is separated at the first layer; prefer one distinct through shape "
            "(con2lib.analysis.contexts.check, docs/contexts.md)"), stacklevel=3)
    return solved is not None


__all__ = ["SOLVED_RATIO", "ContextSolvedWarning", "context_solved", "term_gradients", "warn_if_context_solved"]
