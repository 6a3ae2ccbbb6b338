"""Losses against slow loops written straight from eqs. 1, 5, 7 and 18, plus closed-form cases."""

import math

import pytest
import torch

from con2lib.method.losses import con2_loss, supcon_loss


def ell(z: torch.Tensor, a: int, b: int, tau: float) -> float:
    """Eq. 1: -log exp(sim(a, b)/tau) / sum_{k != a} exp(sim(a, k)/tau), cosine similarity."""
    def sim(i: int, j: int) -> float:
        return float(torch.dot(z[i], z[j]) / (z[i].norm() * z[j].norm()))

    den = sum(math.exp(sim(a, k) / tau) for k in range(len(z)) if k != a)
    return -math.log(math.exp(sim(a, b) / tau) / den)


def slow_pair_mean(z: torch.Tensor, labels: list[int], tau: float) -> tuple[float, int]:
    terms = [ell(z, a, b, tau) for a in range(len(z)) for b in range(len(z)) if a != b and labels[a] == labels[b]]
    return sum(terms) / len(terms), len(terms)


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_context_loss_matches_eq5(tau: float) -> None:
    torch.manual_seed(0)
    n = 3
    z = torch.randn(4 * n, 8, dtype=torch.float64)
    contexts = [0] * (2 * n) + [1] * (2 * n)
    expected, pairs = slow_pair_mean(z, contexts, tau)
    assert pairs == 4 * n * (2 * n - 1)  # K of eq. 5
    got = supcon_loss(z, torch.tensor(contexts), tau)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_content_loss_matches_eq7() -> None:
    torch.manual_seed(1)
    n = 4
    z = torch.randn(4 * n, 6, dtype=torch.float64)
    ids = list(range(n)) * 4
    expected, pairs = slow_pair_mean(z, ids, 0.2)
    assert pairs == 12 * n  # eq. 7's normalisation
    assert supcon_loss(z, torch.tensor(ids), 0.2).item() == pytest.approx(expected, rel=1e-10)


def test_simclr_is_supcon_with_pair_labels_eq18() -> None:
    torch.manual_seed(2)
    n = 5
    z = torch.randn(2 * n, 7, dtype=torch.float64)
    # eq. 18: views 2i and 2i+1 are a pair; mean over both directions of every pair
    expected = sum(ell(z, 2 * i, 2 * i + 1, 0.5) + ell(z, 2 * i + 1, 2 * i, 0.5) for i in range(n)) / (2 * n)
    labels = torch.arange(n).repeat_interleave(2)
    assert supcon_loss(z, labels, 0.5).item() == pytest.approx(expected, rel=1e-10)


def test_identical_projections_give_log_m_minus_1() -> None:
    # all similarities equal: every pair's loss is log(M - 1), whatever the temperature
    z = torch.ones(12, 4)
    labels = torch.tensor([0] * 6 + [1] * 6)
    assert supcon_loss(z, labels, 0.07).item() == pytest.approx(math.log(11), rel=1e-6)


def test_perfect_clusters_closed_form() -> None:
    # two orthogonal clusters of m identical points: positives sim 1, negatives sim 0
    m, tau = 3, 0.5
    z = torch.cat([torch.tensor([[1.0, 0.0]]).repeat(m, 1), torch.tensor([[0.0, 1.0]]).repeat(m, 1)])
    labels = torch.tensor([0] * m + [1] * m)
    den = (m - 1) * math.exp(1 / tau) + m * math.exp(0.0)
    expected = -math.log(math.exp(1 / tau) / den)
    assert supcon_loss(z, labels, tau).item() == pytest.approx(expected, rel=1e-6)


def test_scale_invariant_and_stable_at_small_temperature() -> None:
    torch.manual_seed(3)
    z = torch.randn(8, 5)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    a = supcon_loss(z, labels, 0.01)
    b = supcon_loss(1e4 * z, labels, 0.01)
    assert torch.isfinite(a) and a.item() == pytest.approx(b.item(), rel=1e-4)


def test_con2_loss_combines_terms_eq8() -> None:
    torch.manual_seed(4)
    n = 3
    zc, zs = torch.randn(4 * n, 8), torch.randn(4 * n, 8)
    contexts = torch.arange(2).repeat_interleave(2 * n)
    ids = torch.arange(n).repeat(4)
    total, l_ctx, l_cnt = con2_loss(zc, zs, contexts, ids, alpha=0.3, temperature=0.2)
    assert l_ctx.item() == pytest.approx(supcon_loss(zc, contexts, 0.2).item())
    assert l_cnt.item() == pytest.approx(supcon_loss(zs, ids, 0.2).item())
    assert total.item() == pytest.approx(l_ctx.item() + 0.3 * l_cnt.item(), rel=1e-6)


def test_gradients_flow_and_are_finite() -> None:
    z = torch.randn(8, 4, requires_grad=True)
    supcon_loss(z, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), 0.1).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
