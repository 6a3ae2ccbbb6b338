"""Image files -> preprocessed uint8 arrays: listing, decoding in parallel, mode conversion and caching.

Every file-based data set goes through :func:`decode_groups`. A *group* is a list of files decoded
and cached together (one class folder of one split), so a one-class ImageNet30 run decodes only the
normal class's training images, and the test set's entries are shared by all 30 normal classes.

Unreadable files (zero bytes, truncated, not an image, images smaller than :data:`MIN_SIDE`) are
skipped with a :class:`SkippedImageWarning` naming them, or raise with ``strict``; files whose
extension is not an image's are never opened (``Thumbs.db``, ``.DS_Store``, ``*.txt``, ...).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from con2lib.data import cache

# re-exported: callers import them from here; the listing lives in its own module
from con2lib.data.listing import IMAGE_SUFFIXES, SkippedImageWarning, check_regular_file, list_images  # noqa: F401
from con2lib.data.pixels import GRAY_MODES, MIN_SIDE, check_size, convert_mode, to_uint8  # noqa: F401

_SKIPPED_SHOWN = 20  # file names listed in one warning; the full list goes to info["skipped_files"]


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

    with ThreadPoolExecutor(_workers()) as pool:
        for _ in tqdm(pool.map(one, range(len(images))), total=len(images), desc=desc, unit="img"):
            pass
    return out


@dataclass(frozen=True)
class Decoded:
    """One group's result: the usable images and which of the group's files they came from.

    Attributes:
        images: uint8 (K, C, size, size), one row per usable file, in file order.
        kept: bool (len(files),), True where the file was usable.
        skipped: ``"<path>: <reason>"`` per unusable file.
    """

    images: np.ndarray
    kept: np.ndarray
    skipped: tuple[str, ...]


@dataclass(frozen=True)
class ImageSource:
    """What decoding a data set's files depends on, besides the files themselves.

    Attributes:
        dataset: data set name (cache entry names, messages).
        root: the data root; cache keys use paths relative to it, so a moved data folder stays cached.
        prep: preprocessing.
        cache_dir: cache folder.
        strict: raise instead of skipping unreadable files.
    """

    dataset: str
    root: Path
    prep: Preprocess
    cache_dir: Path
    strict: bool = False


def decode_groups(groups: Sequence[Sequence[Path]], names: Sequence[str], src: ImageSource) -> list[Decoded]:
    """Decodes groups of files, from the cache where possible, with one thread pool and progress bar.

    Args:
        groups: lists of files, each decoded and cached as one entry.
        names: a stable name per group (e.g. ``"train/NORMAL"``), so a changed group replaces its old entry.
        src: dataset, root, preprocessing, cache folder and strictness.

    Raises:
        ValueError: with ``src.strict``, naming every unreadable file.
    """
    tag = f"{src.prep.size}{src.prep.mode}"
    entries = [
        cache.entry_path(src.cache_dir, src.dataset, tag, {"root": str(src.root), "group": name},
                         {"files": cache.file_fingerprints(files, src.root), "prep": asdict(src.prep)})
        for files, name in zip(groups, names, strict=True)
    ]
    results: list[Decoded | None] = [_from_cache(cache.load(e), len(g)) for e, g in zip(entries, groups, strict=True)]
    todo = [i for i, r in enumerate(results) if r is None]
    if todo:
        fresh = _decode_many([groups[i] for i in todo], src)
        for i, decoded in zip(todo, fresh, strict=True):
            results[i] = decoded
            cache.save(entries[i], {"images": decoded.images, "kept": decoded.kept,
                                    "skipped": np.asarray(decoded.skipped, dtype=str)})
    done = [r for r in results if r is not None]
    _report([s for r in done for s in r.skipped], src)
    return done


def _from_cache(arrays: dict[str, np.ndarray] | None, n_files: int) -> Decoded | None:
    if arrays is None or not {"images", "kept", "skipped"} <= arrays.keys():
        return None
    kept = arrays["kept"].astype(bool)
    if len(kept) != n_files or int(kept.sum()) != len(arrays["images"]):
        return None  # inconsistent entry (should not happen with atomic writes): rebuild it
    return Decoded(arrays["images"], kept, tuple(str(s) for s in arrays["skipped"]))


def _decode_many(groups: Sequence[Sequence[Path]], src: ImageSource) -> list[Decoded]:
    prep = src.prep
    # Each worker writes into its own preallocated row: no per-image lists that double peak memory.
    outs = [np.empty((len(g), prep.channels, prep.size, prep.size), dtype=np.uint8) for g in groups]
    errors: list[dict[int, str]] = [{} for _ in groups]
    jobs = [(gi, fi) for gi, g in enumerate(groups) for fi in range(len(g))]

    def one(job: tuple[int, int]) -> None:
        gi, fi = job
        path = groups[gi][fi]
        try:
            outs[gi][fi] = decode_file(path, prep)
        except MemoryError:
            raise
        except Exception as err:  # noqa: BLE001 - any decoder failure means "unreadable file"
            errors[gi][fi] = f"{path}: {type(err).__name__}: {err}"

    with ThreadPoolExecutor(_workers()) as pool:
        for _ in tqdm(pool.map(one, jobs), total=len(jobs), desc=f"decoding {src.dataset}", unit="img"):
            pass
    decoded = []
    for out, errs, g in zip(outs, errors, groups, strict=True):
        kept = np.ones(len(g), dtype=bool)
        kept[list(errs)] = False
        images = out if kept.all() else out[kept]
        decoded.append(Decoded(images, kept, tuple(errs[i] for i in sorted(errs))))
    return decoded


def _report(skipped: list[str], src: ImageSource) -> None:
    if not skipped:
        return
    shown = "\n  ".join(skipped[:_SKIPPED_SHOWN])
    more = f"\n  ... and {len(skipped) - _SKIPPED_SHOWN} more" if len(skipped) > _SKIPPED_SHOWN else ""
    if src.strict:
        raise ValueError(
            f"data set {src.dataset!r}: {len(skipped)} unreadable image file(s) (strict=True; set strict=False "
            f"to skip them with a warning):\n  {shown}{more}"
        )
    warnings.warn(
        f"data set {src.dataset!r}: skipped {len(skipped)} unreadable image file(s) (listed in the run's "
        f"info['skipped_files']; strict=True makes this an error):\n  {shown}{more}",
        SkippedImageWarning,
        stacklevel=3,
    )


def _workers() -> int:
    # PIL releases the GIL while decoding and resizing, so threads scale with the cores.
    return max(1, min(32, os.cpu_count() or 1))
