"""On-disk cache of decoded, preprocessed images, so only the first run of a data set pays for decoding.

An entry is one uncompressed ``.npz`` file (uncompressed because loading must take seconds, not
minutes) named after the data set, the image size and mode, and a hash of everything the decoded
pixels depend on: the files (relative path, size, modification time), the preprocessing and
:data:`CACHE_VERSION`. A changed file therefore yields a new entry instead of stale pixels. Entries are
written to a temporary file and renamed into place, so a killed run never leaves a half-written entry
that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from con2lib.paths import project_root, resolve

if TYPE_CHECKING:
    from con2lib.config import Config

# Bump when decoding or preprocessing changes in a way that alters pixels of existing entries.
# 2: float images in [0, 1] are scaled by 255 (entries of 1 hold them as 0/1 pixels); NaN or negative ones skipped
CACHE_VERSION = 2


def cache_dir(cfg: Config, data_paths: Sequence[Path] = ()) -> Path:
    """The cache folder of a run: ``cfg.cache_dir``, or ``<project root>/.cache/con2``.

    Raises:
        ValueError: if the folder lies inside a data folder (data folders may be read-only or shared,
            and a cache there would be picked up as data by the folder listings).
    """
    folder = resolve(cfg.cache_dir) if cfg.cache_dir else project_root() / ".cache" / "con2"
    for data in data_paths:
        data = Path(data).resolve()
        if folder == data or data in folder.parents:
            raise ValueError(
                f"parameter cache_dir={str(folder)!r} lies inside the data folder {str(data)!r}; "
                "choose a cache folder outside the data (the default is <project>/.cache/con2)"
            )
    return folder


def file_fingerprints(files: Sequence[Path], root: Path) -> list[tuple[str, int, int]]:
    """(path relative to ``root``, size, mtime in ns) per file: what a cache entry's validity rests on."""
    out = []
    for path in files:
        try:
            st = path.stat()
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:  # a dangling or looping link: decoding skips it by name; here it only marks the entry
            size, mtime = -1, -1
        try:
            name = path.relative_to(root).as_posix()
        except ValueError:  # outside the data root (the "folder" data set): the absolute path names it
            name = path.as_posix()
        out.append((name, size, mtime))
    return out


def entry_path(folder: Path, dataset: str, tag: str, slot: Any, key: Any) -> Path:
    """Where the entry for ``key`` (any JSON-serialisable description of the content) lives.

    ``slot`` names what the entry holds independently of its content (e.g. the data root and class
    folder); :func:`save` replaces older entries of the same slot, so edited data does not pile up
    stale entries.
    """
    slot_hash = _digest({"dataset": dataset, "slot": slot})[:8]
    return folder / f"{dataset}_{tag}_{slot_hash}_{_digest({'dataset': dataset, 'key': key})[:20]}.npz"


def _digest(obj: Any) -> str:
    payload = json.dumps({"version": CACHE_VERSION, **obj}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def load(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of an entry, or None when it does not exist or cannot be read (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {name: z[name] for name in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        warnings.warn(f"ignoring unreadable cache entry {path} ({err}); decoding the images again", stacklevel=2)
        return None


def save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Writes an entry atomically; a cache that cannot be written only costs speed, so it warns."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
        tmp = None
        slot_prefix = path.name.rsplit("_", 1)[0]
        for stale in path.parent.glob(f"{slot_prefix}_*.npz"):
            if stale != path:
                stale.unlink(missing_ok=True)
    except OSError as err:
        warnings.warn(f"could not write the image cache {path} ({err}); the next run decodes again", stacklevel=2)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
