"""A data set's image files -> preprocessed uint8 arrays, decoded in parallel and cached.

Every file-based data set goes through :func:`decode_groups`. A *group* is a list of files decoded
and cached together (one class folder of one split), so a one-class ImageNet30 run decodes only the
normal class's training images, and the test set's entries are shared by all 30 normal classes.
Unreadable files are skipped with one :class:`~con2lib.data.listing.SkippedImageWarning` naming
them, or raise with ``strict``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from con2lib.data import cache
from con2lib.data.images import Preprocess, decode_file, workers
from con2lib.data.listing import SkippedImageWarning

_SKIPPED_SHOWN = 20  # file names listed in one warning; the full list goes to info["skipped_files"]


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

    with ThreadPoolExecutor(workers()) as pool:
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
