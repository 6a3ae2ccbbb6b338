"""Context augmentations t_c (paper section 3.3): a deterministic change of context per image.

A context augmentation must be *distinct* (eq. 9: no transformed image looks like a normal one) and
*aligned* (eq. 10: distances between images survive the transform). Every function here is batched,
keeps device and dtype, and has no random parameters. :mod:`con2lib.analysis.contexts` checks both assumptions
for each candidate on a user's normal images before any training.
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


def rot90(x: torch.Tensor) -> torch.Tensor:
    """Rotation by 90 degrees counter-clockwise on the (H, W) axes, as torchvision's ``rotate(x, 90)``.

    Only square images keep their shape; every data set of this project is resized to a square.
    """
    return torch.rot90(x, 1, dims=(-2, -1))


def rot180(x: torch.Tensor) -> torch.Tensor:
    """Rotation by 180 degrees (a vertical and a horizontal flip)."""
    return torch.rot90(x, 2, dims=(-2, -1))


def rot270(x: torch.Tensor) -> torch.Tensor:
    """Rotation by 90 degrees clockwise (270 counter-clockwise): with rot90 and rot180, the rotation contexts."""
    return torch.rot90(x, 3, dims=(-2, -1))


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Horizontal flip: mirrors the width axis (left and right swapped)."""
    return x.flip(-1)


def permute(x: torch.Tensor) -> torch.Tensor:
    """Channel permutation RGB -> BRG on (B, C, H, W) colour images; the identity on 1-channel images.

    On grayscale data this is no context at all: :func:`con2lib.analysis.contexts.check` rejects it there.
    """
    return x.roll(1, dims=-3)  # channel 0 <- last channel: (R, G, B) -> (B, R, G)


CONTEXT_AUGMENTATIONS = {"invert": invert, "flip": flip, "equalize": equalize, "rot90": rot90, "rot180": rot180, "rot270": rot270,
                         "hflip": hflip, "permute": permute}


def context_augment(x: torch.Tensor, name: str) -> torch.Tensor:
    """Applies the named context augmentation.

    Args:
        x: float (B, C, H, W) images in [0, 1], on any device (square for ``rot90``).
        name: one of ``invert``, ``flip``, ``equalize``, ``rot90``, ``rot180``, ``hflip``, ``permute``,
            or several joined by ``+`` (applied left to right: ``flip+invert`` flips, then inverts), the
            combined contexts of appendix E.2.

    Returns:
        float (B, C, H, W) tensor on the same device with the same dtype.

    Raises:
        ValueError: an unknown name, or ``auto`` (a choice to resolve before training, not a transform).
    """
    if name == "auto":
        raise ValueError("context 'auto' is not a transform: resolve it first with "
                         "con2lib.analysis.contexts.resolve_context(cfg, train_images)")
    for part in name.split("+"):
        try:
            fn = CONTEXT_AUGMENTATIONS[part]
        except KeyError:
            raise ValueError(f"unknown context augmentation {part!r}; expected one of "
                             f"{', '.join(CONTEXT_AUGMENTATIONS)}, or several joined by '+'") from None
        x = fn(x)
    return x
