"""The learning signal: the gradient each loss term puts on the encoder, and the warning when the context's dies."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from test_contexts import bars

import con2lib.method.learning_signal as signal
from con2lib.config import Config
from con2lib.method.device import seed_everything
from con2lib.method.epochs import EpochStats, epoch_line, train_epochs
from con2lib.method.learning_signal import ContextSolvedWarning, context_solved, term_gradients
from con2lib.method.models import build_model
from con2lib.method.train import fit

# oriented bars at 16 px: invert is separable by the sign of any pixel, rot90 needs the bar's direction
BARS = {"image_size": 16, "width": 0.25, "stem": "stride2", "batch_size": 32, "proj_dim": 32,
        "crop_scale_min": 0.5, "hflip_p": 0.0, "jitter_strength": 0.0, "device": "cpu"}


def test_term_gradients_closed_form_and_batch_size_free() -> None:
    h = torch.randn(6, 5, requires_grad=True)
    square = (h ** 2).sum(1).mean()  # d/dh_i of V * L = 2 h_i: the size is the RMS of ||2 h_i||
    sizes = term_gradients(h, (square, torch.zeros(())))
    assert sizes[0] == pytest.approx(float(2 * h.detach().norm(dim=1).pow(2).mean().sqrt()), rel=1e-5)
    assert sizes[1] == 0  # a term without a graph (L_context of the SimCLR baseline)
    doubled = torch.cat([h.detach()] * 2).requires_grad_()
    assert term_gradients(doubled, ((doubled ** 2).sum(1).mean(),))[0] == pytest.approx(float(sizes[0]), rel=1e-5)
    (square * 3).backward()  # the graph is kept for the training step's own backward
    assert torch.allclose(h.grad, 6 * h.detach() / 6)


def test_term_gradients_equal_a_slow_loop_over_views() -> None:
    torch.manual_seed(0)
    h = torch.randn(8, 4, requires_grad=True)
    head = torch.nn.Linear(4, 3)
    loss = torch.logsumexp(head(h), dim=1).mean()
    per_view = []
    for i in range(len(h)):  # the gradient of the summed loss with respect to view i alone
        hi = h.detach().clone().requires_grad_()
        total = torch.logsumexp(head(hi), dim=1).sum()
        (grad,) = torch.autograd.grad(total, hi)
        per_view.append(grad[i].norm() ** 2)
    assert float(term_gradients(h, (loss,))[0]) == pytest.approx(float(torch.stack(per_view).mean().sqrt()), rel=1e-5)


def _history(values: list[float]) -> list[EpochStats]:
    return [EpochStats(e, 0, 0, 0, 0, 0, 0, v, 1.0) for e, v in enumerate(values, start=1)]


def test_context_solved_only_in_the_first_quarter_and_only_for_a_context_term() -> None:
    cfg = Config.from_params({"epochs": 8})
    assert context_solved(cfg, _history([1.0, 0.009]), 8).epoch == 2
    assert context_solved(cfg, _history([1.0, 0.011, 0.5]), 8) is None  # 1.1 %: still teaching
    assert context_solved(cfg, _history([1.0, 0.5, 0.2, 0.001]), 8) is None  # epoch 3 is past the first quarter
    assert context_solved(cfg.replace(loss="content_only"), _history([1.0, 0.0]), 8) is None
    assert context_solved(cfg, _history([0.0, 0.0]), 8) is None  # no first-epoch signal to compare with
    assert context_solved(cfg, _history([math.nan, 0.0]), 8) is None  # history of an older checkpoint


def _fit_bars(context: str, epochs: int = 16) -> list[EpochStats]:
    cfg = Config.from_params({**BARS, "context": context, "epochs": epochs})
    seed_everything(0)
    model = build_model(cfg, 1)
    return fit(cfg, model, bars(centred=False)[:96], progress=False)


def test_invert_solves_the_context_task_rot90_keeps_teaching(monkeypatch) -> None:
    """The issue's finding, seeded and small: invert's context gradient falls by orders of magnitude, rot90's not."""
    monkeypatch.setattr(signal, "SOLVED_RATIO", 0.05)  # a short run: its first quarter is 4 epochs
    with pytest.warns(ContextSolvedWarning, match="the context task is solved: this context no longer teaches"):
        invert = _fit_bars("invert")
    assert min(h.grad_context for h in invert[3:]) < 0.03 * invert[0].grad_context
    assert all(h.grad_content > 0 for h in invert[1:])  # alpha > 0: the content term still teaches
    with warnings.catch_warnings():
        warnings.simplefilter("error", ContextSolvedWarning)
        rot90 = _fit_bars("rot90")
    assert min(h.grad_context for h in rot90) > 0.1 * rot90[0].grad_context


def test_epoch_line_shows_the_signal_and_min_steps_raises_the_epochs() -> None:
    line = epoch_line(EpochStats(3, 6.0, 4.0, 5.0, 0.5, 1e-3, 100.0, 0.0123, 0.456), 10, 30.0, 3)
    assert "grad context 1.23e-02, content 4.56e-01" in line
    cfg = Config.from_params({"epochs": 20, "batch_size": 32, "min_steps": 300})
    assert train_epochs(cfg, 130) == 75  # 4 steps per epoch
    assert train_epochs(cfg, 13000) == 20  # a large set already trains 8,000 steps
    assert train_epochs(cfg.replace(min_steps=0), 130) == 20
    with pytest.raises(ValueError, match="min_steps"):
        Config.from_params({"min_steps": -1})


def test_fit_trains_min_steps_and_alpha_follows_steps() -> None:
    cfg = Config.from_params({"dataset": "digits", "image_size": 8, "width": 0.125, "epochs": 1, "min_steps": 6,
                              "batch_size": 16, "device": "cpu", "alpha_start": 0.0, "alpha_end": 1.0})
    seed_everything(0)
    images = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    history = fit(cfg, build_model(cfg, 1), images, progress=False)
    assert len(history) == 3  # 2 steps per epoch: raised from 1 epoch to 3
    assert history[-1].alpha == pytest.approx(1.0) and history[0].alpha == pytest.approx(1 / 5)
    assert all(h.grad_context > 0 and h.grad_content > 0 for h in history)
