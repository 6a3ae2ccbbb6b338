"""The speed paths keep the results: half-precision banks, blocked scores, faiss, compile and channels_last."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import con2lib.method.augment.content as content
import con2lib.method.scores.gaussian as gaussian
from con2lib.config import Config
from con2lib.data import load_dataset
from con2lib.method.augment import ContentAugment, normalize
from con2lib.method.device import seed_everything
from con2lib.method.evaluate import auroc, nnd_bank
from con2lib.method.models import build_model
from con2lib.method.scores import GaussianScorer, nnd_index, nnd_score
from con2lib.method.train import fit
from con2lib.method.views import content_augment_for, make_views

from conftest import TINY


def synthetic_features(n: int = 2000, normal: int = 400, anomalous: int = 400, d: int = 64,
                       seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Normal features around a few cluster centres, anomalies partly off them: an AUROC well inside (0.5, 1)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(8, d, generator=g) * 3
    train = centres[torch.randint(0, 8, (n,), generator=g)] + torch.randn(n, d, generator=g)
    normal_test = centres[torch.randint(0, 8, (normal,), generator=g)] + torch.randn(normal, d, generator=g)
    off = centres[torch.randint(0, 8, (anomalous,), generator=g)] + 1.5 * torch.randn(anomalous, d, generator=g)
    test = torch.cat([normal_test, off])
    labels = np.r_[np.zeros(normal), np.ones(anomalous)]
    return train, test, labels


def test_content_augment_groups_and_index_do_not_change_the_views(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.rand(10, 3, 24, 24)
    index = torch.tensor([0, 1, 2, 0, 1, 2, 9, 9, 4])
    aug = ContentAugment(size=16)
    whole = aug(x[index], torch.Generator().manual_seed(2))
    monkeypatch.setattr(content, "_CPU_TILE_BYTES", 2 * 3 * 16 * 16 * 4)  # groups of 2 images
    # same random parameters, other grouping: float sums run in another order (3e-8 apart on some CPUs)
    torch.testing.assert_close(aug(x, torch.Generator().manual_seed(2), index=index), whole, rtol=0, atol=1e-6)
    torch.testing.assert_close(aug(x[index], torch.Generator().manual_seed(2)), whole, rtol=0, atol=1e-6)
    normalized = aug(x, torch.Generator().manual_seed(2), index=index, normalized=True)
    torch.testing.assert_close(normalized, normalize(whole), rtol=0, atol=1e-6)


def test_make_views_are_the_augmented_copies_in_order() -> None:
    cfg = Config.from_params({**TINY, "image_size": 16})
    x = torch.randint(0, 256, (5, 1, 16, 16), dtype=torch.uint8)
    aug = content_augment_for(cfg)
    views, contexts, ids = make_views(x, cfg, aug, torch.Generator().manual_seed(0))
    xf = x.float() / 255
    expected = aug(torch.cat([xf, xf, 1 - xf, 1 - xf]), torch.Generator().manual_seed(0))
    assert torch.allclose(views, normalize(expected), atol=1e-6)
    assert contexts.tolist() == [0] * 10 + [1] * 10 and ids.tolist() == list(range(5)) * 4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_bank_keeps_the_auroc(dtype: torch.dtype) -> None:
    train, test, labels = synthetic_features()
    exact = auroc(labels, nnd_score(test, train))
    assert 0.6 < exact < 0.999  # a ranking the precision could disturb
    half = nnd_score(test, train.to(dtype))
    assert half.dtype == torch.float32
    assert abs(auroc(labels, half) - exact) < 1e-3


def test_nnd_bank_is_unchanged_on_cpu() -> None:
    train = torch.randn(2, 10, 4)
    assert nnd_bank(train) is train


def test_blocked_nnd_and_index_equal_one_block_for_any_chunks() -> None:
    train, test, _ = synthetic_features(n=300, normal=40, anomalous=30, d=16)
    sims = torch.nn.functional.normalize(test, dim=1) @ torch.nn.functional.normalize(train, dim=1).T
    for qc, bc in [(None, None), (7, 13), (1, 300), (70, 1), (1000, 64)]:
        assert torch.allclose(nnd_score(test, train, qc, bc), -sims.amax(1), atol=1e-6)
        # blocks change the summation order: an index may differ only where two similarities tie within 1e-6
        got = nnd_index(test, train, qc, bc)
        torch.testing.assert_close(sims.gather(1, got[:, None]).squeeze(1), sims.amax(1), rtol=0, atol=1e-6)


def test_nnd_index_ties_go_to_the_first_training_feature() -> None:
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 3.0]])
    assert nnd_index(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), train, bank_chunk=2).tolist() == [0, 1]


def test_nnd_empty_queries() -> None:
    assert nnd_score(torch.zeros(0, 4), torch.randn(5, 4)).shape == (0,)


def test_gaussian_chunked_fit_and_score_equal_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    train, test = torch.randn(2, 100, 6, dtype=torch.float64) + 2.0, torch.randn(2, 30, 6) + 2.0
    original = train.clone()
    whole = GaussianScorer(0.05).fit(train)
    assert torch.equal(train, original)  # fit works in place on copies only
    monkeypatch.setattr(gaussian, "_ROWS", 7)
    chunked = GaussianScorer(0.05).fit(train)
    assert torch.allclose(chunked.cholesky, whole.cholesky, atol=1e-12)
    assert torch.allclose(chunked.mean, whole.mean, atol=1e-12)
    assert torch.allclose(chunked.score(test), whole.score(test), atol=1e-5)


def test_gaussian_float32_products_keep_scores_and_auroc() -> None:
    # encoder features are float32: their Gram matrix is computed in float32, summed in float64
    train, test, labels = synthetic_features(n=3000, d=128)
    exact = GaussianScorer(0.1).fit(train.double()).score(test.double())
    fast = GaussianScorer(0.1).fit(train).score(test)
    assert torch.allclose(fast, exact, rtol=1e-4)
    assert abs(auroc(labels, fast) - auroc(labels, exact)) < 1e-4


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_ann_auroc_within_a_tenth_of_a_point_of_exact(kind: str) -> None:
    pytest.importorskip("faiss")
    from con2lib.method.scores.ann import ann_nnd_score

    train, test, labels = synthetic_features(n=5000)
    exact = nnd_score(test, train)
    approx = ann_nnd_score(test, train, kind=kind)
    assert approx.shape == exact.shape and approx.dtype == torch.float32
    assert abs(auroc(labels, approx) - auroc(labels, exact)) <= 1e-3
    # an approximate neighbour is never nearer than the exact one
    assert bool((approx >= exact - 1e-5).all())


def test_ann_without_faiss_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from con2lib.method.scores.ann import ann_nnd_score

    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` fail
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        ann_nnd_score(torch.randn(3, 4), torch.randn(10, 4))


def test_compile_flag_compiles_the_model_and_keeps_state_dict_names(monkeypatch: pytest.MonkeyPatch) -> None:
    # a real torch.compile takes about 2 minutes on 2 CPU cores: check the wiring with a stand-in
    compiled = []

    def fake_compile(model: torch.nn.Module) -> torch.nn.Module:
        compiled.append(model)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    cfg = Config.from_params({**TINY, "compile": True, "epochs": 1})
    seed_everything(0)
    data = load_dataset(cfg)
    model = build_model(cfg, data.train.shape[1])
    names = list(model.state_dict())
    fit(cfg, model, data.train, progress=False)
    assert compiled == [model]
    assert list(model.state_dict()) == names


def test_channels_last_training_matches_contiguous_features() -> None:
    cfg = Config.from_params({**TINY, "epochs": 1})
    seed_everything(0)
    data = load_dataset(cfg)
    model = build_model(cfg, data.train.shape[1])
    fit(cfg, model, data.train, progress=False)
    assert model.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    plain = build_model(cfg, data.train.shape[1])
    plain.load_state_dict(model.state_dict())
    model.eval()
    plain.eval()
    x = torch.rand(4, data.train.shape[1], cfg.image_size, cfg.image_size)
    with torch.no_grad():
        assert torch.allclose(model.encoder(x), plain.encoder(x), atol=1e-4)
