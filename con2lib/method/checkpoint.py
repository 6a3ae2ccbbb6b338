"""Checkpoints that are written atomically and loaded without executing code, and training states to resume.

A *training checkpoint* (:func:`training_state`) holds, besides the model, everything the training loop
needs to continue exactly where it stopped: the optimiser and LR-scheduler states, the RNG states
(torch, the training generator, NumPy, Python; CUDA when used), the epoch and the per-epoch history.
:func:`restore_training` puts them back, so a resumed run draws the same random numbers and ends
with the same weights as an uninterrupted one (docs/sweeps.md, "Resume").
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import random
import re
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

# What ``torch.load(weights_only=True)`` reads back; anything else would make the checkpoint unloadable.
_LITERALS = (str, bytes, int, float, bool, complex, type(None), torch.dtype, torch.device)
_CONTAINERS = (dict, OrderedDict, list, tuple, torch.Size)
# Config fields that name a run rather than describe its training: two runs that differ only here train alike.
RUN_IDENTITY = ("run_id",)


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
        # torch's weights_only unpickler names a global it refuses ("Unsupported global: GLOBAL x", or for a
        # blocked module such as os: "unsupported GLOBAL posix.system whose module posix is blocked")
        found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(err), re.IGNORECASE)
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


def check_finite(value: Any, where: str) -> None:
    """Raises ValueError naming the first float tensor or number in ``value`` (nested dicts, lists) that is NaN or
    infinite.

    A ``weights_only`` load accepts such values; a model built from them scores every image NaN, or decides
    against a NaN threshold (nothing is ever above it), without a word.
    """
    if isinstance(value, torch.Tensor):
        if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise ValueError(f"{where} holds {bad} NaN or infinite value(s) of {value.numel()}: a damaged or "
                             "tampered file, refused")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} is {value}: expected a finite number (a damaged or tampered file, refused)")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_finite(item, f"{where}[{i}]")


def model_state(model: torch.nn.Module, cfg_dict: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The checkpoint of a trained model: its weights, the config that built it, and extras."""
    return {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "config": cfg_dict, **extra}


def config_key(cfg_dict: dict[str, Any]) -> str:
    """A hash of a config without its run identity: equal for the runs a checkpoint may be resumed by."""
    text = json.dumps({k: v for k, v in cfg_dict.items() if k not in RUN_IDENTITY}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def rng_states(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    """Every RNG state training may draw from, as tensors and plain lists (``weights_only`` loadable)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states = {"torch": torch.get_rng_state(), "generator": generator.get_state(),
              "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                        "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
              "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: dict[str, Any], generator: torch.Generator, device: torch.device) -> None:
    """Restores what :func:`rng_states` saved."""
    torch.set_rng_state(states["torch"].cpu())
    generator.set_state(states["generator"].cpu())
    numpy = states["numpy"]
    np.random.set_state((numpy["name"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    python = states["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    if "cuda" in states and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"].cpu(), device)


def training_state(cfg_dict: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   scheduler: Any, generator: torch.Generator, epoch: int, step: int,
                   history: list[dict[str, Any]]) -> dict[str, Any]:
    """A training checkpoint after ``epoch`` (``step`` optimiser steps); ``history``: the epochs' statistics."""
    device = next(model.parameters()).device
    training = {"optimizer": _to_cpu(optimizer.state_dict()), "scheduler": scheduler.state_dict(), "step": step,
                "rng": rng_states(generator, device), "history": history}
    return model_state(model, cfg_dict, epoch=epoch, training=training)


def load_training_state(path: str | os.PathLike[str], cfg_dict: dict[str, Any]) -> dict[str, Any] | None:
    """The training checkpoint at ``path`` to continue ``cfg_dict``'s training from; None when there is none.

    A file without a training state (the final checkpoint of a finished run) counts as none.

    Raises:
        ValueError: the checkpoint is corrupt, or was written by a run with other parameters (named);
            training on from it would silently mix two configurations.
    """
    if not Path(path).is_file():
        return None
    state = load_checkpoint(path)
    if "training" not in state:
        return None
    check_finite(state.get("model", {}), f"checkpoint {path} model")
    saved = state.get("config", {})
    differ = sorted(k for k in saved.keys() & cfg_dict.keys() if k not in RUN_IDENTITY and saved[k] != cfg_dict[k])
    if differ:
        shown = ", ".join(f"{k}={saved[k]!r} (now {cfg_dict[k]!r})" for k in differ)
        raise ValueError(f"checkpoint {path} was written by a run with other parameters: {shown}; "
                         "remove it or run with the same parameters")
    return state


def restore_training(state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any, generator: torch.Generator) -> tuple[int, int, list[dict[str, Any]]]:
    """Loads a training checkpoint into the objects of a fresh training loop.

    Returns:
        ``(epoch, step, history)``: the last completed epoch, the optimiser steps taken, the epochs' statistics.
    """
    device = next(model.parameters()).device
    model.load_state_dict(state["model"])
    training = state["training"]
    optimizer.load_state_dict(training["optimizer"])  # moves the moments to the parameters' device
    scheduler.load_state_dict(training["scheduler"])
    set_rng_states(training["rng"], generator, device)
    return int(state["epoch"]), int(training["step"]), list(training["history"])


def resume_training(path: str | os.PathLike[str] | None, cfg_dict: dict[str, Any], model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, generator: torch.Generator,
                    share: Callable[[Any], Any] | None = None) -> tuple[int, int, list[dict[str, Any]]]:
    """Where a training loop starts: after the training checkpoint at ``path``, if any, else at the beginning.

    Args:
        path: the training checkpoint (None: start afresh; a worker of a distributed run passes None).
        share: under DDP, hands rank 0's loaded state to every rank
            (:meth:`con2lib.method.distributed.Group.broadcast`).

    Returns:
        ``(epoch, step, history)`` as :func:`restore_training`; ``(0, 0, [])`` without a checkpoint.
    """
    state = load_training_state(path, cfg_dict) if path is not None else None
    if share is not None:
        state = share(state)
    if state is None:
        return 0, 0, []
    return restore_training(state, model, optimizer, scheduler, generator)


def training_epoch(path: str | os.PathLike[str]) -> int | None:
    """The epoch of the training checkpoint at ``path``; None if there is none (or it is unreadable)."""
    try:
        state = load_checkpoint(path)
    except (FileNotFoundError, ValueError):
        return None
    return int(state["epoch"]) if "training" in state and "epoch" in state else None


def _to_cpu(value: Any) -> Any:
    """Tensors of nested dicts and lists moved to the CPU (the checkpoint loads anywhere)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


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
