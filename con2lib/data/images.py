"""One image file (or array) -> a preprocessed uint8 array: decoding, mode conversion, resizing.

:mod:`con2lib.data.decoding` decodes a data set's files with these in parallel, with a cache.
Unreadable files (zero bytes, truncated, not an image, images smaller than :data:`MIN_SIDE`) are
skipped with a :class:`SkippedImageWarning` naming them, or raise with ``strict``; files whose
extension is not an image's are never opened (``Thumbs.db``, ``.DS_Store``, ``*.txt``, ...).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

# re-exported: callers import them from here; the listing lives in its own module
from con2lib.data.listing import IMAGE_SUFFIXES, SkippedImageWarning, check_regular_file, list_images  # noqa: F401
from con2lib.data.pixels import GRAY_MODES, MIN_SIDE, check_size, convert_mode, to_uint8  # noqa: F401


@dataclass(frozen=True)
class Preprocess:
    """How a decoded image becomes a ``size`` x ``size`` array.

    Attributes:
        size: side of the square output.
        mode: ``"L"`` (1 channel) or ``"RGB"`` (3 channels); every image is converted to it.
        resize: ``"crop"``: shorter edge to ``round(size * crop_ratio)``, then a centre crop of ``size``;
            ``"square"``: plain resize to ``size`` x ``size`` (aspect ratio not kept); ``"array"``: as
            ``"square"``, but resampled as the in-memory data sets are (:func:`con2lib.data.base.resize_uint8`:
            torch's antialiased bilinear), so a new image matches digits / MNIST / CIFAR training images.
        crop_ratio: 256/224 reproduces the paper's "resize 256, centre-crop 224" at any size.
    """

    size: int
    mode: str
    resize: str = "crop"
    crop_ratio: float = 1.0

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    def describe(self) -> str:
        """Human-readable preprocessing for ``info`` (logged with every run)."""
        if self.resize == "array":
            how = f"resize to {self.size}x{self.size} (antialiased bilinear, torch)"
        elif self.resize == "square":
            how = f"resize to {self.size}x{self.size}"
        else:
            how = f"resize shorter edge to {round(self.size * self.crop_ratio)}, centre crop {self.size}x{self.size}"
        return f"{how}, mode {self.mode}"

    def apply(self, img: Image.Image) -> np.ndarray:
        """Converts, resizes and crops one image; returns uint8 (C, size, size)."""
        img = convert_mode(img, self.mode)
        s = self.size
        if self.resize == "array":
            import torch

            from con2lib.data.base import resize_uint8  # late: plain decoding needs no torch

            arr = np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy warns on PIL's read-only view
            chw = np.ascontiguousarray(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
            return resize_uint8(torch.from_numpy(chw)[None], s)[0].numpy()
        if self.resize == "square":
            if img.size != (s, s):
                img = img.resize((s, s), Image.Resampling.BILINEAR)
        else:
            short = round(s * self.crop_ratio)
            w, h = img.size
            scale = short / min(w, h)
            nw, nh = max(short, round(w * scale)), max(short, round(h * scale))
            if (nw, nh) != (w, h):
                img = img.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = int(round((nw - s) / 2.0)), int(round((nh - s) / 2.0))  # as torchvision's CenterCrop
            img = img.crop((left, top, left + s, top + s))
        arr = np.asarray(img, dtype=np.uint8)
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def sniff_mode(files: Sequence[Path], sample: int = 64) -> str:
    """``"L"`` if an evenly spaced sample of the files (headers only) is all grayscale, else ``"RGB"``."""
    step = max(1, len(files) // sample)
    for path in list(files)[::step][:sample]:
        try:
            with Image.open(path) as img:
                if img.mode not in GRAY_MODES:
                    return "RGB"
        except Exception:  # noqa: BLE001 - unreadable files are reported when they are decoded
            continue
    return "L"


def decode_file(path: Path | IO[bytes], prep: Preprocess) -> np.ndarray:
    """Decodes and preprocesses one file (path or open binary file); raises on any unreadable or too small image."""
    if isinstance(path, (str, os.PathLike)):
        check_regular_file(path)  # a FIFO named x.png would block the decoding thread for ever
    try:
        opened = Image.open(path)
    except UnidentifiedImageError:  # PIL's message names the file object ("<_io.BytesIO object at 0x...>")
        raise ValueError("not an image file (no image format recognised: PNG, JPEG, TIFF, ...)") from None
    with opened as img:
        check_size(*img.size)
        # JPEG: let libjpeg decode at a reduced scale that still covers the output (much faster for
        # large photos); target "L" from a colour JPEG skips decoding the chroma channels.
        need = round(prep.size * prep.crop_ratio) if prep.resize == "crop" else prep.size
        img.draft("L" if prep.mode == "L" and img.mode == "RGB" else None, (need, need))
        img.load()
        with contextlib.suppress(Exception):  # a broken EXIF block does not make the pixels unusable
            ImageOps.exif_transpose(img, in_place=True)  # the image as a viewer shows it
        return prep.apply(img)


def prepare_image(image: str | os.PathLike[str] | bytes | np.ndarray, prep: Preprocess) -> np.ndarray:
    """One new image, prepared exactly as the training images of a data set with ``prep`` were.

    Args:
        image: a file path, encoded file bytes (PNG, JPEG, ...), or pixels (H, W), (H, W, C) or (C, H, W),
            C in 1, 3, 4: uint8, float in [0, 1], or wider integers (scaled as files are: :func:`to_uint8`),
            at least :data:`MIN_SIDE` pixels on a side.
            An array already (``prep.channels``, size, size) is what a data set holds: returned as it is.

    Returns:
        uint8 (C, size, size).

    Raises:
        ValueError, OSError: undecodable bytes or file, an unusable array shape or pixel range, an image under
            MIN_SIDE pixels.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_file(io.BytesIO(bytes(image)), prep)
    if isinstance(image, (str, os.PathLike)):
        return decode_file(Path(image), prep)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"expected numeric image pixels, got dtype {arr.dtype}")
        arr = to_uint8(arr, arr.dtype.kind in "bf")  # the rules of image files (convert_mode)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # (C, H, W) -> PIL's (H, W, C)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"expected an image array (H, W), (H, W, C) or (C, H, W), got shape {np.shape(image)}")
    check_size(arr.shape[1], arr.shape[0])  # refused as a file of that size is
    chw = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if chw.shape == (prep.channels, prep.size, prep.size):
        return np.ascontiguousarray(chw)
    return prep.apply(Image.fromarray(np.ascontiguousarray(arr)))


def preprocess_arrays(images: np.ndarray, prep: Preprocess, desc: str) -> np.ndarray:
    """Preprocesses in-memory uint8 (N, H, W) or (N, H, W, C) images (MedMNIST) -> (N, C, size, size)."""
    out = np.empty((len(images), prep.channels, prep.size, prep.size), dtype=np.uint8)

    def one(i: int) -> None:
        out[i] = prep.apply(Image.fromarray(np.ascontiguousarray(images[i])))

    with ThreadPoolExecutor(workers()) as pool:
        for _ in tqdm(pool.map(one, range(len(images))), total=len(images), desc=desc, unit="img"):
            pass
    return out


def workers() -> int:
    # PIL releases the GIL while decoding and resizing, so threads scale with the cores.
    return max(1, min(32, os.cpu_count() or 1))
