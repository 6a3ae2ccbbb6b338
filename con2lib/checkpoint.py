"""Checkpoints that are written atomically and loaded without executing code."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Writes ``state`` (tensors and plain literals only) to ``path`` atomically.

    The file is written next to its destination and renamed into place, so a crash or a full disk
    leaves either the previous checkpoint or the new one, never a truncated file under the real name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Loads a checkpoint with ``weights_only=True`` (no pickled code runs).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is truncated, corrupt or holds more than tensors and literals.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, zipfile errors...
        raise ValueError(f"checkpoint {path} is truncated or corrupt and was not loaded: {err}") from err
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


def model_state(model: torch.nn.Module, cfg_dict: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The checkpoint of a trained model: its weights, the config that built it, and extras."""
    return {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "config": cfg_dict, **extra}
