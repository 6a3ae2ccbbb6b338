"""Pixels of any mode and depth -> 8-bit grayscale or RGB, by one set of rules for image files and arrays.

A float image (PIL mode ``F``, a float32 TIFF, or a float array) in [0, 1] is scaled by 255, as
torchvision's ``ToTensor`` range; 16-bit images are divided by 257. Read as plain 8-bit values, a [0, 1]
image would become a black picture of 0/1 pixels, and 16-bit values clip to a white one, both without a word.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

MIN_SIDE = 8  # smaller images carry no usable content at any image_size the models accept
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_HIGH_DEPTH = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def convert_mode(img: Image.Image, mode: str) -> Image.Image:
    """Converts any PIL mode to ``"L"`` or ``"RGB"``, scaling 16/32-bit and float images to 8 bits.

    PIL's own ``convert("L")`` clips 16-bit values at 255 (a white image), hence the explicit scaling of
    :func:`to_uint8` (float images, mode ``F``, in [0, 1] are scaled by 255 as float arrays are).
    Alpha channels are dropped (as torchvision's loader does); palette images go through RGBA so
    their transparency does not trigger PIL warnings.
    """
    if img.mode in _HIGH_DEPTH:
        img = Image.fromarray(to_uint8(np.asarray(img), img.mode == "F"))
    elif img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode != mode:
        if mode == "L" and img.mode not in GRAY_MODES | {"RGB", "RGBA"}:
            img = img.convert("RGB")  # e.g. CMYK, YCbCr: through RGB, which every mode converts to
        img = img.convert(mode)
    return img


def to_uint8(pixels: np.ndarray, is_float: bool) -> np.ndarray:
    """Pixels of any depth -> uint8, decided by their value range, for files and arrays alike.

    Floats (and booleans) in [0, 1] are the range torchvision's ``ToTensor`` makes: scaled by 255. Values that
    fit 8 bits stay; up to 65535 (16 bits) they are divided by 257; larger ones are scaled by their maximum.

    Raises:
        ValueError: NaN or infinite pixels, or negative ones: no range to read them in.
    """
    a = pixels.astype(np.float64)
    if not a.size:
        return a.astype(np.uint8)
    low, top = float(a.min()), float(a.max())
    if not (np.isfinite(low) and np.isfinite(top)):
        raise ValueError("image pixels are NaN or infinite")
    if low < 0:
        raise ValueError(f"image pixels range from {low:.6g} to {top:.6g}: expected values >= 0 (uint8, 16-bit, "
                         "or float in [0, 1])")
    if is_float and top <= 1:
        scale = 255.0
    else:
        scale = 1.0 if top <= 255 else 1 / 257 if top <= 65535 else 255 / top
    return np.clip(np.round(a * scale), 0, 255).astype(np.uint8)


def check_size(width: int, height: int) -> None:
    """Raises ValueError for an image under :data:`MIN_SIDE` pixels on a side (file or array alike)."""
    if min(width, height) < MIN_SIDE:
        raise ValueError(f"image too small ({width}x{height} pixels; at least {MIN_SIDE}x{MIN_SIDE} needed)")
