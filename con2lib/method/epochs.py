"""An epoch of training as the run sees it: its statistics, its length, its progress line."""

from __future__ import annotations

import math
from dataclasses import dataclass

from con2lib.config import Config

PREFIX = "epoch "  # a progress line starts so: ``con2 run`` echoes these lines to the terminal


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""

    def __init__(self, epoch: int, step: int, value: float) -> None:
        super().__init__(f"non-finite loss {value} at epoch {epoch}, step {step}: training stopped "
                         "(lower lr or temperature, or check the input data)")
        self.epoch, self.step, self.value = epoch, step, value


@dataclass
class EpochStats:
    """Per-epoch means, as logged to MLflow.

    ``grad_context`` and ``grad_content`` are the learning signal each loss term puts on the encoder:
    the root mean square over the step's views of the gradient of the (unweighted) term, summed over
    the views, with respect to each view's encoder features
    (:func:`con2lib.method.learning_signal.term_gradients`), averaged over the epoch's steps. NaN in the
    history of checkpoints written before they existed.
    """

    epoch: int
    loss: float
    loss_context: float
    loss_content: float
    alpha: float
    lr: float
    images_per_s: float
    grad_context: float = math.nan
    grad_content: float = math.nan


def steps_per_epoch(cfg: Config, n_train: int) -> int:
    """Optimiser steps in one epoch over ``n_train`` images (the last incomplete batch is dropped)."""
    return max(1, n_train // min(cfg.batch_size, n_train))


def train_epochs(cfg: Config, n_train: int) -> int:
    """Epochs that ``fit`` trains: ``cfg.epochs``, raised so that small sets take at least ``cfg.min_steps`` steps."""
    return max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch(cfg, n_train)))


def duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``12s``: short enough for a progress line."""
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def epoch_line(stats: EpochStats, epochs: int, elapsed_s: float, done_here: int) -> str:
    """One epoch's progress line.

    Args:
        stats: the epoch's :class:`EpochStats`.
        epochs: epochs of the whole run.
        elapsed_s: seconds this process has trained so far.
        done_here: epochs this process has trained (fewer than ``stats.epoch`` after a resume), for the ETA.

    The total loss is L_context + alpha * L_content: it rises while alpha anneals, so the line also
    shows the unweighted terms, and the gradient each puts on the encoder (``grad``: the learning
    signal, :mod:`con2lib.method.learning_signal`; a term whose gradient has collapsed teaches nothing more).
    """
    eta = elapsed_s / max(done_here, 1) * (epochs - stats.epoch)
    return (f"{PREFIX}{stats.epoch}/{epochs}  loss {stats.loss:.4f} (context {stats.loss_context:.4f}, "
            f"content {stats.loss_content:.4f}, alpha {stats.alpha:.2f})  grad context {stats.grad_context:.2e}, "
            f"content {stats.grad_content:.2e}  {stats.images_per_s:.0f} img/s  "
            f"elapsed {duration(elapsed_s)}  ETA {duration(eta)}")
