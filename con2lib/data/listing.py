"""Listing the image files of a folder tree: every file once, whatever links and permissions the tree holds.

Symbolic links to folders are followed (a data set assembled from links is common), but never into a
folder already being walked or already walked: a link to an ancestor (``ln -s .. loop``) would list the
tree again and again, and a second link to one folder would list its images twice, making held-out
images copies of training images. Files are de-duplicated by their real path for the same reason.
A sub-folder that cannot be read is reported like an unreadable image file (a
:class:`SkippedImageWarning`, or an error with ``strict``) instead of vanishing silently.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

from con2lib.paths import under_system_dir

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


class SkippedImageWarning(UserWarning):
    """An image file (or a folder of them) could not be used and was left out (``strict=False``)."""


def list_images(folder: Path, strict: bool = False) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted, each real file once.

    Hidden files and folders (macOS ``._x.jpg`` resource forks, ``.DS_Store``), ``__MACOSX`` folders and
    files without an image extension are left out silently: they are archive debris, not data. Links to
    folders are followed unless they lead into a folder already walked (a loop or a duplicate).

    Raises:
        ValueError: with ``strict``, naming the sub-folders that could not be read.
    """
    unreadable: list[str] = []

    def report(err: OSError) -> None:
        unreadable.append(f"{err.filename}: {type(err).__name__}: {err.strerror or err}")

    walked: set[str] = set()
    files: dict[str, Path] = {}  # real path -> the first (sorted) path naming it
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=report):
        walked.add(os.path.realpath(dirpath))
        kept = []
        for name in sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX"):
            real = os.path.realpath(os.path.join(dirpath, name))
            if under_system_dir(real):  # a link to /proc/self: its root/ is the whole machine
                unreadable.append(f"{os.path.join(dirpath, name)}: links to {real}, a kernel file system")
            elif real not in walked:  # os.walk is top-down: ancestors and earlier folders are all in ``walked``
                walked.add(real)
                kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                path = Path(dirpath) / name
                files.setdefault(os.path.realpath(path), path)
    _report_folders(unreadable, folder, strict)
    return sorted(files.values())


def check_regular_file(path: str | os.PathLike[str]) -> None:
    """Raises ValueError for a FIFO, socket or device with an image's name: opening a FIFO waits for a writer
    for ever, a device reads without end. OSError as ``os.stat`` raises it (a dangling link: not found)."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError("not a regular file (a FIFO, socket or device): not opened")


def _report_folders(unreadable: list[str], folder: Path, strict: bool) -> None:
    if not unreadable:
        return
    listed = "\n  ".join(unreadable)
    if strict:
        raise ValueError(f"{len(unreadable)} unreadable folder(s) under {folder} (strict=True; set strict=False "
                         f"to skip them with a warning):\n  {listed}")
    warnings.warn(f"skipped {len(unreadable)} unreadable folder(s) under {folder} and the images in them "
                  f"(strict=True makes this an error):\n  {listed}", SkippedImageWarning, stacklevel=3)
