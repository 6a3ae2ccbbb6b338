"""Checkpoints that are written atomically and loaded without executing code."""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

# What ``torch.load(weights_only=True)`` reads back; anything else would make the checkpoint unloadable.
_LITERALS = (str, bytes, int, float, bool, complex, type(None), torch.dtype, torch.device)
_CONTAINERS = (dict, OrderedDict, list, tuple, torch.Size)


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Writes ``state`` (tensors and plain literals only) to ``path`` atomically.

    The file is written next to its destination and renamed into place, so a crash or a full disk
    leaves either the previous checkpoint or the new one, never a truncated file under the real name.

    Raises:
        TypeError: ``state`` holds an object that a ``weights_only`` load would refuse (named by its
            place in ``state``), found before anything is written.
        OSError: the file could not be written (full disk, permissions); the previous checkpoint is kept.
    """
    _check_literals(state, "state")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        kept = "the previous checkpoint is kept" if path.is_file() else "no checkpoint was written"
        raise OSError(err.errno, f"checkpoint {path} could not be written ({err.strerror or err}); {kept}") from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Loads a checkpoint with ``weights_only=True`` (no pickled code runs).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is truncated or corrupt, or holds objects other than tensors and
            literals (refused: unpickling them could run code).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's weights_only unpickler names a global it refuses; anything else is damage
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found:
            raise ValueError(
                f"checkpoint {path} references {found.group(1)} (not a tensor or plain literal) and was refused: "
                "loading it could run arbitrary code. Only if you trust its source: "
                "torch.load(path, weights_only=False)") from err
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(err))
        raise ValueError(f"checkpoint {path} is truncated or corrupt (or holds objects other than tensors and "
                         f"literals) and was not loaded: {detail.group(1) if detail else _first_line(err)}") from err
    except Exception as err:  # torch raises RuntimeError, EOFError, zipfile errors...
        raise ValueError(f"checkpoint {path} is truncated or corrupt and was not loaded: {_first_line(err)}") from err
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


def model_state(model: torch.nn.Module, cfg_dict: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The checkpoint of a trained model: its weights, the config that built it, and extras."""
    return {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "config": cfg_dict, **extra}


def _check_literals(value: Any, where: str) -> None:
    """Raises TypeError naming the first object a ``weights_only`` load would refuse."""
    if type(value) in _CONTAINERS:
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(value, dict):
                _check_literals(key, f"{where} key {key!r}")
            _check_literals(item, f"{where}[{key!r}]")
    elif type(value) not in _LITERALS and not isinstance(value, torch.Tensor):  # exact: np.float64 is a float
        raise TypeError(f"checkpoint {where} is a {type(value).__module__}.{type(value).__qualname__}; a checkpoint "
                        "holds only tensors, numbers, strings and lists/dicts of them (it must load with "
                        "weights_only=True)")


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
