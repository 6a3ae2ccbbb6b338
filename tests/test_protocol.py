"""The mechanisms behind the paper's protocol: Gaussian blur in T, the plain S_LH covariance with the
smallest invertible ridge, test-time views drawn from T, and the SimCLR baseline scored on x only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from torchvision.transforms.v2 import functional as TF

from con2lib.analysis.metrics import run_diagnostics
from con2lib.config import Config
from con2lib.data import load_dataset
from con2lib.method.augment import ContentAugment, context_augment
from con2lib.method.device import seed_everything
from con2lib.method.evaluate import evaluate, extract_features
from con2lib.method.models import build_model
from con2lib.method.scores import GaussianScorer
from con2lib.method.scores.gaussian import _RIDGES, smallest_ridge
from con2lib.method.views import View, tta_views

from conftest import TINY

CPU = torch.device("cpu")


# --- Gaussian blur (SimCLR's ImageNet recipe) -------------------------------------------------------

def test_blur_is_torchvisions_gaussian_blur_with_one_sigma_per_image() -> None:
    x = torch.rand(4, 3, 40, 40)
    # full-image crop, no flip, no colour: the pipeline is the blur alone
    aug = ContentAugment(40, crop_scale=(1, 1), crop_ratio=(1, 1), hflip_p=0, jitter_p=0, grayscale_p=0, blur_p=1)
    out = aug(x, torch.Generator().manual_seed(3))
    u = torch.rand(4, 13, generator=torch.Generator().manual_seed(3))  # the draws the pipeline made
    sigma = 0.1 + 1.9 * u[:, 12]
    assert sigma.std() > 0.1  # the images really get different sigmas
    for i in range(4):  # kernel 40 // 10 = 4 -> radius 2, 5 taps
        want = TF.gaussian_blur(x[i], [5, 5], [float(sigma[i])] * 2)
        torch.testing.assert_close(out[i], want, atol=1e-5, rtol=0)


def test_blur_leaves_images_not_drawn_unchanged() -> None:
    x = torch.rand(2, 1, 30, 30)
    out = ContentAugment(30, blur_p=0.5)._blur(x.clone(), torch.tensor([0.2, 0.7]), torch.tensor([0.9, 0.9]))
    assert torch.allclose(out[1], x[1], atol=1e-6) and not torch.allclose(out[0], x[0], atol=1e-3)


def test_no_blur_keeps_the_random_draws_of_the_blur_free_pipeline() -> None:
    # blur_p 0 (every preset) must augment exactly as before blur existed: same 11 draws per image
    x = torch.rand(3, 3, 32, 32)
    ref = ContentAugment(32)(x, torch.Generator().manual_seed(0))
    u = torch.rand(3, 11, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ContentAugment(32, blur_p=0.0)(x, torch.Generator().manual_seed(0)), ref)
    assert torch.allclose(ContentAugment(32)._augment(x, u, False), ref)


def test_blur_p_is_validated_by_name() -> None:
    with pytest.raises(ValueError, match=r"parameter blur_p=1.5 is invalid"):
        Config.from_params({**TINY, "blur_p": 1.5})


# --- S_LH: plain covariance (eq. 14), smallest invertible ridge -------------------------------------

def _unit(z: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(z.double(), dim=-1).numpy()


def test_plain_covariance_when_invertible_equals_the_gaussian_nll() -> None:
    torch.manual_seed(0)
    train, test = torch.randn(200, 6) + 2, torch.randn(7, 6)
    scorer = GaussianScorer(0.0).fit(train)
    z = _unit(train)
    want = -multivariate_normal(z.mean(0), np.cov(z, rowvar=False)).logpdf(_unit(test))
    assert scorer.ridge == 0.0
    np.testing.assert_allclose(scorer.score(test).numpy(), want, rtol=1e-4)


def test_singular_covariance_gets_the_smallest_ridge_that_inverts_it() -> None:
    torch.manual_seed(0)
    train = torch.randn(5, 16, dtype=torch.float64)  # n <= D: rank at most 4 of 16 (float64: exact products)
    scorer = GaussianScorer(0.0).fit(train)
    ridge = scorer.ridge
    assert ridge > 0 and torch.isfinite(scorer.score(torch.randn(3, 16))).all()
    z = torch.from_numpy(_unit(train))
    cov = torch.cov(z.T)
    scale = cov.diagonal().mean()
    fitted = scorer.cholesky @ scorer.cholesky.T
    torch.testing.assert_close(fitted, cov + ridge * scale * torch.eye(16, dtype=torch.float64), atol=1e-12, rtol=1e-9)
    # the ladder step below is not enough: the covariance would be numerically singular
    smaller = _RIDGES[_RIDGES.index(ridge) - 1]
    eig = torch.linalg.eigvalsh(cov + smaller * scale * torch.eye(16, dtype=torch.float64))
    assert eig[0] <= 16 * torch.finfo(torch.float64).eps * eig[-1]
    assert smallest_ridge(cov + smaller * scale * torch.eye(16, dtype=torch.float64)) > 0


def test_shrinkage_needs_no_ridge() -> None:
    train = torch.randn(5, 16)
    assert GaussianScorer(0.1).fit(train).ridge == 0.0
    assert smallest_ridge(torch.zeros(2, 3, 3)) == _RIDGES[1]  # identical features: the smallest positive one


# --- test-time views (eq. 16) ------------------------------------------------------------------------

def test_paper_views_are_all_draws_from_T_half_on_x_half_on_the_copy() -> None:
    cfg = Config.from_params({**TINY, "tta": 40, "tta_identity": False})
    views = tta_views(cfg)
    assert [v.context for v in views] == [""] * 20 + ["invert"] * 20
    assert all(v.augment for v in views) and len({v.seed for v in views}) == 40
    zero = tta_views(cfg.replace(tta=0))  # tta 0 means un-augmented whatever tta_identity says
    assert [(v.context, v.augment) for v in zero] == [("", False), ("invert", False)]


def test_simclr_scores_x_only() -> None:
    cfg = Config.from_params({**TINY, "loss": "simclr", "tta": 3, "tta_identity": False})
    assert cfg.scored_contexts == 1 and cfg.context_view is None
    assert [v.context for v in tta_views(cfg)] == ["", "", ""]
    assert [v.context for v in tta_views(cfg.replace(tta=0))] == [""]
    with pytest.raises(ValueError, match=r"parameter tta=3 .*multiple of the 2 contexts"):
        cfg.replace(loss="con2")


@pytest.mark.parametrize("params", [{"loss": "simclr", "tta": 2, "tta_identity": False},
                                    {"loss": "con2", "tta": 4, "tta_identity": True}])
def test_diagnostics_use_the_unaugmented_pair(params: dict) -> None:
    cfg = Config.from_params({**TINY, "epochs": 1, "max_train": 24, "max_test": 30, **params})
    seed_everything(0)
    data = load_dataset(cfg)
    encoder = build_model(cfg, data.train.shape[1]).encoder
    result = evaluate(cfg, encoder, data, CPU)
    assert result.train_features.shape[0] == cfg.n_views
    plain = extract_features(encoder, data.test, [View("", False, 0), View("invert", False, 0)], cfg, CPU)
    torch.testing.assert_close(result.plain_test, plain, atol=1e-5, rtol=1e-4)
    if cfg.loss == "simclr":  # every scored view is of x: no scored feature equals the context copy's
        copies = extract_features(encoder, context_augment(data.test.float() / 255, "invert").mul(255).round()
                                  .to(torch.uint8), [View("", False, 0)], cfg, CPU)[0]
        assert not any(torch.allclose(v, copies, atol=1e-3) for v in result.test_features)
    diagnostics = run_diagnostics(cfg, result, data.test_labels)
    assert -1 <= diagnostics["silhouette_context"] <= 1 and 0 <= diagnostics["auroc_nnd_notta"] <= 1
