"""A run's local folder (``runs/<run id>/``): claimed by one process at a time, its notebook written atomically.

Claim: continuing an interrupted run writes its checkpoint and logs to its MLflow run; two processes
doing it at once (the same command started twice) would log every step twice and overwrite each
other's checkpoint. The process that continues a run holds an exclusive lock on ``run.lock`` beside the
checkpoint for as long as it runs; the operating system releases it when the process ends, however
it ends, so a killed holder never blocks the next start.

Notebook: papermill rewrites the executed notebook after every cell; written in place, a full disk
leaves truncated JSON. Written to a temporary file and renamed, it is the previous cell's complete
notebook or the new one.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a run is then not protected against a second start
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "run.lock"


class RunBusy(Exception):
    """Another live process holds the run (its pid and host are the message)."""


class Claim:
    """An exclusive claim on a run folder; :meth:`release` (or the process ending) gives it up."""

    def __init__(self, folder: Path) -> None:
        """Claims ``folder``.

        Raises:
            RunBusy: another process holds it; the message names that process.
        """
        folder.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(self._fd, 200, 0).decode(errors="replace").strip() or "another process"
            self.release()
            raise RunBusy(holder) from err
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"process {os.getpid()} on {socket.gethostname()}".encode(), 0)

    def release(self) -> None:
        """Gives the claim up (closing the file releases the lock); idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class AtomicNotebookWriter:
    """papermill I/O handler of one output path: writes a temporary file, then renames it into place."""

    def read(self, path: str) -> str:
        return Path(path).read_text(encoding="utf-8")

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def pretty_path(self, path: str) -> str:
        return path

    def write(self, buf: str, path: str) -> None:
        target = Path(path)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(buf)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_notebook_path(path: Path) -> str:
    """``path`` for papermill's ``output_path``, written by :class:`AtomicNotebookWriter`.

    papermill picks a handler by path prefix: the handler is registered for exactly this path (the
    path itself stays a plain path for everything else that reads it).
    """
    from papermill.iorw import papermill_io

    text = str(path)
    if not isinstance(papermill_io.get_handler(text), AtomicNotebookWriter):
        papermill_io.register(text, AtomicNotebookWriter())
    return text
