"""The contrastive loss behind every CON2 term: instance discrimination averaged over positive pairs."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean instance-discrimination loss over all ordered pairs with equal labels.

    For projections z_a, z_b with labels y_a = y_b, a != b, the pair's loss is eq. 1 of the paper,

        l(z_a, z_b, Z) = -log exp(sim(z_a, z_b) / tau) / sum_{k != a} exp(sim(z_a, z_k) / tau),

    with cosine similarity ``sim``. The result is the mean of ``l`` over all such ordered pairs:
    with the context as label it is L_context (eq. 5, K = 4N(2N - 1) pairs for 4N views), with the
    sample index as label it is L_content (eq. 7, 12N pairs), and with one label per pair of views
    it is SimCLR's loss (eq. 18).

    Args:
        z: (M, D) projections; they are L2-normalised here.
        labels: (M,) integer labels; at least one label must occur twice.
        temperature: tau > 0.

    Returns:
        Scalar loss tensor on ``z``'s device.
    """
    z = F.normalize(z, dim=1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    # subtract the row max for stability; the log-softmax below is shift invariant
    logits = logits - logits.detach().max(dim=1, keepdim=True).values
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    # sum over a float mask instead of boolean indexing: no host-device synchronisation
    log_prob = log_prob.masked_fill(self_mask, 0.0)
    weights = positives.to(log_prob.dtype)
    return -(log_prob * weights).sum() / weights.sum()
