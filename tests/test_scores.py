"""S_NND against brute-force numpy, S_LH against scipy."""

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from con2lib.method.scores import GaussianScorer, nnd_index, nnd_score


def brute_nnd(test: np.ndarray, train: np.ndarray) -> np.ndarray:
    out = []
    for t in test:
        sims = [float(t @ r / (np.linalg.norm(t) * np.linalg.norm(r))) for r in train]
        out.append(-max(sims))
    return np.array(out)


def test_nnd_matches_brute_force_and_is_chunk_invariant() -> None:
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(50, 6)), rng.normal(size=(17, 6))
    expected = brute_nnd(test, train)
    got = nnd_score(torch.tensor(test), torch.tensor(train))
    assert got.dtype == torch.float32 and got.shape == (17,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)
    chunked = nnd_score(torch.tensor(test), torch.tensor(train), query_chunk=4, bank_chunk=7)
    np.testing.assert_allclose(chunked.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_nnd_of_a_training_point_is_minus_one_and_index_finds_it() -> None:
    train = torch.randn(30, 5)
    test = train[[3, 7]] * 2.5  # scaled copies: cosine similarity 1
    assert torch.allclose(nnd_score(test, train), torch.tensor([-1.0, -1.0]), atol=1e-6)
    assert nnd_index(test, train).tolist() == [3, 7]


def test_nnd_half_precision_bank_keeps_ranking() -> None:
    torch.manual_seed(0)
    train, test = torch.randn(200, 16), torch.randn(40, 16)
    full = nnd_score(test, train)
    half = nnd_score(test, train.half())
    assert torch.allclose(full, half, atol=2e-3)


def test_gaussian_matches_scipy_without_shrinkage() -> None:
    rng = np.random.default_rng(1)
    train = rng.normal(size=(400, 4)) @ rng.normal(size=(4, 4)) + 3.0
    test = rng.normal(size=(10, 4)) + 3.0
    scorer = GaussianScorer(shrinkage=0.0).fit(torch.tensor(train))
    z = train / np.linalg.norm(train, axis=1, keepdims=True)
    zt = test / np.linalg.norm(test, axis=1, keepdims=True)
    expected = -multivariate_normal(z.mean(0), np.cov(z, rowvar=False)).logpdf(zt)
    np.testing.assert_allclose(scorer.score(torch.tensor(test)).numpy(), expected, rtol=1e-5)


def test_gaussian_shrinkage_formula() -> None:
    rng = np.random.default_rng(2)
    train = rng.normal(size=(30, 5))
    lam = 0.3
    z = train / np.linalg.norm(train, axis=1, keepdims=True)
    cov = np.cov(z, rowvar=False)
    shrunk = (1 - lam) * cov + lam * np.trace(cov) / 5 * np.eye(5)
    test = rng.normal(size=(6, 5))
    zt = test / np.linalg.norm(test, axis=1, keepdims=True)
    expected = -multivariate_normal(z.mean(0), shrunk).logpdf(zt)
    got = GaussianScorer(lam).fit(torch.tensor(train)).score(torch.tensor(test))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


def test_gaussian_singular_covariance_needs_shrinkage_and_works_with_it() -> None:
    train = torch.randn(5, 32)  # n < d
    scores = GaussianScorer(0.1).fit(train).score(torch.randn(3, 32))
    assert torch.isfinite(scores).all()


def test_gaussian_batched_views_equal_separate_fits_and_state_dict_roundtrip() -> None:
    torch.manual_seed(3)
    train, test = torch.randn(3, 40, 6), torch.randn(3, 9, 6)
    batched = GaussianScorer(0.05).fit(train)
    got = batched.score(test)
    for v in range(3):
        assert torch.allclose(got[v], GaussianScorer(0.05).fit(train[v]).score(test[v]), atol=1e-5)
    restored = GaussianScorer(0.05)
    restored.load_state_dict(batched.state_dict())
    assert torch.equal(restored.score(test), got)


def test_gaussian_errors() -> None:
    with pytest.raises(ValueError, match="shrinkage"):
        GaussianScorer(1.5)
    with pytest.raises(RuntimeError, match="before fit"):
        GaussianScorer().score(torch.randn(2, 3))
    with pytest.raises(ValueError, match="at least 2"):
        GaussianScorer().fit(torch.randn(1, 3))


def test_nnd_score_views_is_the_mean_over_views_of_each_views_own_bank() -> None:
    from con2lib.method.scores import nnd_score_views

    torch.manual_seed(0)
    test, train = torch.randn(3, 7, 5), torch.randn(3, 11, 5)
    expected = sum(nnd_score(test[v], train[v]) for v in range(3)) / 3
    assert torch.allclose(nnd_score_views(test, train), expected, atol=1e-6)
    swapped = nnd_score_views(test, train.flip(0))  # banks of other views: a different score
    assert not torch.allclose(swapped, expected)
