"""Where the project lives, so relative paths mean the same from a notebook, a shell or papermill."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The repository root (holding ``params/`` and ``notebooks/``), or the working directory.

    ``CON2_HOME`` overrides it; an installed, non-editable package falls back to the working directory.
    """
    if os.environ.get("CON2_HOME"):
        return Path(os.environ["CON2_HOME"]).resolve()
    here = Path(__file__).resolve().parents[1]
    if (here / "pyproject.toml").is_file() and (here / "notebooks").is_dir():
        return here
    return Path.cwd().resolve()


def resolve(path: str | os.PathLike[str]) -> Path:
    """Absolute path; a relative one is taken relative to the project root, not the kernel's cwd."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (project_root() / p).resolve()


SYSTEM_DIRS = ("/proc", "/sys", "/dev")  # kernel file systems: no data; /proc/self/root is the whole machine
_RAM_DISK = "/dev/shm"  # a plain tmpfs where data is staged for speed: not a device


def under_system_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path``, links resolved, lies under /proc, /sys or /dev (never a data folder; /dev/shm may be)."""
    real = os.path.realpath(path)

    def under(top: str) -> bool:
        return real == top or real.startswith(top + os.sep)

    return any(under(top) for top in SYSTEM_DIRS) and not under(_RAM_DISK)
