"""The CON2 objective (eq. 8): context contrasting plus alpha times content alignment."""

from __future__ import annotations

import torch

from con2lib.method.losses.supcon import supcon_loss


def con2_loss(
    z_context: torch.Tensor,
    z_content: torch.Tensor,
    context_labels: torch.Tensor,
    sample_ids: torch.Tensor,
    alpha: float | torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L = L_context + alpha * L_content.

    Args:
        z_context: (4N, D) projections of the context head h_phi.
        z_content: (4N, D) projections of the content head h_psi (same view order).
        context_labels: (4N,) context of each view (0 = original, 1 = context copy; more contexts
            give more labels, appendix E.2).
        sample_ids: (4N,) index of the training image each view came from.
        alpha: weight of content alignment (annealed from 0 to 1 over training).
        temperature: tau of both terms.

    Returns:
        (total, l_context, l_content) scalar tensors.
    """
    l_context = supcon_loss(z_context, context_labels, temperature)
    l_content = supcon_loss(z_content, sample_ids, temperature)
    return l_context + alpha * l_content, l_context, l_content
