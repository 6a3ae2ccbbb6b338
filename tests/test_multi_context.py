"""Several context augmentations at once (paper appendix E.2): config, views, labels, TTA, one epoch."""

from __future__ import annotations

import pytest
import torch

from con2lib.analysis.metrics import run_diagnostics
from con2lib.config import Config
from con2lib.data import load_dataset
from con2lib.method.augment import context_augment, normalize
from con2lib.method.device import seed_everything
from con2lib.method.evaluate import evaluate
from con2lib.method.losses import con2_loss, supcon_loss
from con2lib.method.models import build_model
from con2lib.method.train import fit
from con2lib.method.views import content_augment_for, make_views, tta_views

from conftest import TINY


def test_a_yaml_list_becomes_one_flat_parameter() -> None:
    cfg = Config.from_params({**TINY, "context": ["flip", "invert", "flip+invert"], "tta": 8})
    assert cfg.context == "flip,invert,flip+invert"
    assert cfg.contexts == ("flip", "invert", "flip+invert") and cfg.n_contexts == 4 and cfg.views_per_context == 2
    assert Config.from_params(cfg.to_dict()) == cfg  # logged and reloaded unchanged
    single = Config.from_params(TINY)
    assert single.n_contexts == 2 and single.views_per_context == single.tta // 2


@pytest.mark.parametrize("context, why", [
    ("flip,flip", "distinct"),
    ("flip,auto", "one of"),
    ("flip+flip", "distinct"),
    ("flip+blur", "one of"),
    (",".join(["flip", "invert", "equalize", "flip+invert", "flip+equalize", "invert+equalize",
               "flip+invert+equalize", "rot90"]), "1 to 7"),
])
def test_bad_context_lists_are_refused_by_name(context: str, why: str) -> None:
    with pytest.raises(ValueError, match=r"parameter context=.*" + why):
        Config.from_params({**TINY, "context": context, "tta": 24})


def test_tta_must_give_every_context_the_same_number_of_views() -> None:
    with pytest.raises(ValueError, match=r"parameter tta=4 .*multiple of the 3 contexts"):
        Config.from_params({**TINY, "context": "flip,invert", "tta": 4})


def test_combined_contexts_apply_left_to_right() -> None:
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(context_augment(x, "flip+invert"), 1 - x.flip(-2))
    assert torch.equal(context_augment(x, "invert+flip+equalize"),
                       context_augment(context_augment(1 - x, "flip"), "equalize"))
    with pytest.raises(ValueError, match="'blur'"):
        context_augment(x, "flip+blur")


def test_make_views_gives_two_views_and_one_label_per_context() -> None:
    cfg = Config.from_params({**TINY, "image_size": 16, "context": "flip,invert", "tta": 3})
    x = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8)
    aug = content_augment_for(cfg)
    views, contexts, ids = make_views(x, cfg, aug, torch.Generator().manual_seed(0))
    xf = x.float() / 255
    expected = aug(torch.cat([xf, xf, xf.flip(-2), xf.flip(-2), 1 - xf, 1 - xf]), torch.Generator().manual_seed(0))
    assert torch.allclose(views, normalize(expected), atol=1e-6)
    assert contexts.tolist() == [0] * 8 + [1] * 8 + [2] * 8
    assert ids.tolist() == list(range(4)) * 6


def test_context_loss_with_three_contexts_is_supcon_over_context_labels() -> None:
    # with K labels, L_context is the supervised contrastive loss whose positives are the views of the
    # same context (eq. 5 with one label per context), L_content unchanged (positives: same image)
    torch.manual_seed(0)
    z_ctx, z_cnt = torch.randn(12, 5), torch.randn(12, 5)
    contexts = torch.arange(3).repeat_interleave(4)
    ids = torch.arange(2).repeat(6)
    total, l_context, l_content = con2_loss(z_ctx, z_cnt, contexts, ids, 0.3, 0.5)
    assert torch.allclose(l_context, supcon_loss(z_ctx, contexts, 0.5))
    assert torch.allclose(l_content, supcon_loss(z_cnt, ids, 0.5))
    assert torch.allclose(total, l_context + 0.3 * l_content)


def test_tta_views_cover_every_context_equally() -> None:
    cfg = Config.from_params({**TINY, "context": "flip,invert", "tta": 6, "tta_identity": True})
    views = tta_views(cfg)
    assert [v.context for v in views] == ["", "", "flip", "flip", "invert", "invert"]
    assert [v.augment for v in views] == [False, True] * 3


def test_three_contexts_train_one_epoch_and_score() -> None:
    cfg = Config.from_params({**TINY, "context": ["flip", "invert"], "epochs": 1, "tta": 6})
    seed_everything(0)
    data = load_dataset(cfg)
    model = build_model(cfg, data.train.shape[1])
    [stats] = fit(cfg, model, data.train, progress=False)
    assert torch.isfinite(torch.tensor([stats.loss, stats.loss_context, stats.loss_content])).all()
    result = evaluate(cfg, model.encoder, data, torch.device("cpu"))
    assert result.train_features.shape[0] == 6 and 0 <= result.auroc_nnd <= 1
    diagnostics = run_diagnostics(cfg, result, data.test_labels)
    assert {"auroc_nnd_identity", "auroc_lh_identity", "silhouette_context"} <= set(diagnostics)


def test_tta_zero_scores_each_context_once_unaugmented() -> None:
    cfg = Config.from_params({**TINY, "context": "flip,invert", "tta": 0})
    views = tta_views(cfg)
    assert cfg.n_views == 3 and cfg.views_per_context == 1
    assert [(v.context, v.augment) for v in views] == [("", False), ("flip", False), ("invert", False)]
