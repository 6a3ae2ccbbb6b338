"""Pure schedule functions of training progress."""

from __future__ import annotations

import math


def linear_alpha(step: int, total_steps: int, start: float = 0.0, end: float = 1.0) -> float:
    """Content-alignment weight, linear from ``start`` at step 0 to ``end`` at the last step (appendix C)."""
    if total_steps <= 1:
        return end
    return start + (end - start) * min(max(step, 0), total_steps - 1) / (total_steps - 1)


def cosine_lr(step: int, total_steps: int, base_lr: float, min_lr: float = 0.0) -> float:
    """Cosine annealing from ``base_lr`` at step 0 to ``min_lr`` after ``total_steps`` steps."""
    progress = min(max(step, 0), total_steps) / max(total_steps, 1)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))
