"""Context augmentations t_c (paper section 3.3): a deterministic change of context per image.

A context augmentation must be *distinct* (eq. 9: no transformed image looks like a normal one) and
*aligned* (eq. 10: distances between images survive the transform). Every function here is batched,
keeps device and dtype, and has no random parameters.
"""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as TF


def invert(x: torch.Tensor) -> torch.Tensor:
    """x -> 1 - x on float images in [0, 1]."""
    return 1.0 - x


def flip(x: torch.Tensor) -> torch.Tensor:
    """Vertical flip: mirrors the height axis (images upside down)."""
    return x.flip(-2)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per image and channel, as torchvision's ``equalize`` on uint8 images.

    The float image is quantised to uint8 first so that the result equals torchvision's (and PIL's)
    equalisation of the uint8 original; torchvision's v2 kernel is batched and runs on any device.
    """
    u8 = (x * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    return TF.equalize(u8).to(x.dtype).div_(255.0)


CONTEXT_AUGMENTATIONS = {"invert": invert, "flip": flip, "equalize": equalize}


def context_augment(x: torch.Tensor, name: str) -> torch.Tensor:
    """Applies the named context augmentation.

    Args:
        x: float (B, C, H, W) images in [0, 1], on any device.
        name: one of ``invert``, ``flip``, ``equalize``.

    Returns:
        float (B, C, H, W) tensor on the same device with the same dtype.
    """
    try:
        fn = CONTEXT_AUGMENTATIONS[name]
    except KeyError:
        raise ValueError(f"unknown context augmentation {name!r}; expected one of {', '.join(CONTEXT_AUGMENTATIONS)}") from None
    return fn(x)
