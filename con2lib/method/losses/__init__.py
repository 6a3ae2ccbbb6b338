"""Contrastive losses: :func:`supcon_loss` (eqs. 1, 5, 7, 18) and :func:`con2_loss` (eq. 8)."""

from con2lib.method.losses.con2 import con2_loss
from con2lib.method.losses.supcon import supcon_loss

__all__ = ["con2_loss", "supcon_loss"]
