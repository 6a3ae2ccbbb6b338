"""The method wired right, checked through ``fit`` and ``evaluate`` rather than the loss functions alone.

Each test here fails when one line of the training or scoring path is mis-wired: context labels and
sample ids swapped between the heads, alpha stuck, the context never applied in training or at test
time, or training that teaches the encoder nothing.
"""

from __future__ import annotations

import pytest
import torch

import con2lib.method.train as train_module
from con2lib.config import Config
from con2lib.data import load_dataset
from con2lib.method.augment import context_augment, normalize
from con2lib.method.device import seed_everything
from con2lib.method.epochs import steps_per_epoch
from con2lib.method.evaluate import evaluate, extract_features
from con2lib.method.models import build_model
from con2lib.method.schedules import linear_alpha
from con2lib.method.train import fit
from con2lib.method.views import View, tta_views

from conftest import TINY

# mild content augmentation, so that each view still shows its source image's context
GENTLE = {**TINY, "crop_scale_min": 0.9, "hflip_p": 0.0, "jitter_strength": 0.0, "grayscale_p": 0.0}


class Spy:
    """Records every call of the training step's loss, then computes it as usual."""

    def __init__(self, real):
        self.real, self.calls = real, []

    def __call__(self, z_context, z_content, contexts, ids, alpha, temperature):
        self.calls.append({"z_context": z_context.detach(), "z_content": z_content.detach(),
                           "contexts": contexts.clone(), "ids": ids.clone(), "alpha": float(alpha)})
        return self.real(z_context, z_content, contexts, ids, alpha, temperature)


def _fit_with_spies(cfg: Config, monkeypatch: pytest.MonkeyPatch):
    seed_everything(cfg.seed)
    data = load_dataset(cfg)
    model = build_model(cfg, data.train.shape[1])
    spy = Spy(train_module.con2_loss)
    monkeypatch.setattr(train_module, "con2_loss", spy)
    seen = {"views": [], "context_head": [], "content_head": []}
    model.register_forward_pre_hook(lambda m, args: seen["views"].append(args[0].detach().clone()))
    model.context_head.register_forward_hook(lambda m, a, out: seen["context_head"].append(out.detach()))
    model.content_head.register_forward_hook(lambda m, a, out: seen["content_head"].append(out.detach()))
    history = fit(cfg, model, data.train, progress=False)
    return spy.calls, seen, history, len(data.train)


def test_context_labels_reach_the_context_head_and_sample_ids_the_content_head(monkeypatch) -> None:
    cfg = Config.from_params({**GENTLE, "epochs": 1, "max_train": 16, "batch_size": 8})
    calls, seen, _, _ = _fit_with_spies(cfg, monkeypatch)
    assert len(calls) == 2
    n = cfg.batch_size
    for call, z_ctx, z_cnt in zip(calls, seen["context_head"], seen["content_head"], strict=True):
        # each head's own projections go to its own term
        torch.testing.assert_close(call["z_context"], z_ctx.float())
        torch.testing.assert_close(call["z_content"], z_cnt.float())
        # views [t(x), t'(x), t(x^c), t'(x^c)]: context 0 then 1; sample ids repeat four times
        assert call["contexts"].tolist() == [0] * (2 * n) + [1] * (2 * n)
        assert call["ids"].tolist() == list(range(n)) * 4


def test_views_labelled_as_context_copies_are_context_copies(monkeypatch) -> None:
    """digits are bright strokes on black: views of x are mostly -1, views of invert(x) mostly +1."""
    cfg = Config.from_params({**GENTLE, "epochs": 1, "max_train": 16, "batch_size": 8})
    calls, seen, _, _ = _fit_with_spies(cfg, monkeypatch)
    for call, views in zip(calls, seen["views"], strict=True):
        means = views.float().mean(dim=(1, 2, 3))
        assert (means[call["contexts"] == 0] < 0).all(), means
        assert (means[call["contexts"] == 1] > 0).all(), means


def test_alpha_follows_its_schedule_step_by_step(monkeypatch) -> None:
    cfg = Config.from_params({**TINY, "epochs": 3, "max_train": 32, "batch_size": 16, "alpha_start": 0.0,
                              "alpha_end": 1.0})
    calls, _, history, n_train = _fit_with_spies(cfg, monkeypatch)
    total = cfg.epochs * steps_per_epoch(cfg, n_train)
    assert [c["alpha"] for c in calls] == pytest.approx([linear_alpha(s, total, 0.0, 1.0) for s in range(total)])
    assert calls[0]["alpha"] == 0.0 and calls[-1]["alpha"] == 1.0
    # the logged per-epoch alpha is the last step's of each epoch, rising to 1
    assert [h.alpha for h in history] == pytest.approx([calls[i]["alpha"] for i in (1, 3, 5)])
    for h in history:  # the logged total is L_context + alpha * L_content with that alpha (epoch means)
        assert h.loss <= h.loss_context + h.loss_content + 1e-5


def test_test_time_views_apply_their_context() -> None:
    cfg = Config.from_params({**TINY, "tta": 4})
    views = tta_views(cfg)
    assert [v.context for v in views] == ["", "", "invert", "invert"]
    assert [v.augment for v in views] == [False, True, False, True]
    torch.manual_seed(0)
    encoder = build_model(cfg, 1).encoder.eval()
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    feats = extract_features(encoder, images, [View("", False, 0), View("invert", False, 0)], cfg,
                             torch.device("cpu"))
    x = images.float() / 255
    with torch.no_grad():
        torch.testing.assert_close(feats[0], encoder(normalize(x)))
        torch.testing.assert_close(feats[1], encoder(normalize(context_augment(x, "invert"))))
    assert not torch.allclose(feats[0], feats[1], atol=1e-3)


def test_training_teaches_the_encoder_to_separate_normal_from_anomalous() -> None:
    """A learning test on an easy task: T-shirts normal, on the training split's own validation split.

    An untrained encoder scores about 0.81 here, raw pixels about 0.91; CON2 trained for 15 short
    epochs reaches about 0.89-0.90 (2 seeds, 5 s). Swapping the heads' labels, or training nothing,
    stays near the untrained figure.
    """
    cfg = Config.from_params({**TINY, "dataset": "fashionmnist", "data_root": "../shared/data", "normal_class": 0,
                              "eval_split": "validation", "max_train": 400, "max_test": 600, "image_size": 16,
                              "width": 0.25, "stem": "stride2", "epochs": 15, "batch_size": 64,
                              "crop_scale_min": 0.5, "hflip_p": 0.0, "jitter_strength": 0.0})
    seed_everything(0)
    data = load_dataset(cfg)
    model = build_model(cfg, 1)
    cpu = torch.device("cpu")
    before = evaluate(cfg, model.encoder, data, cpu).auroc_nnd
    fit(cfg, model, data.train, progress=False)
    after = evaluate(cfg, model.encoder, data, cpu).auroc_nnd
    assert after > before + 0.04, (before, after)
