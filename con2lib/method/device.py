"""Where the method runs: the device, the seeds, and the memory layout every forward pass uses."""

from __future__ import annotations

import random

import numpy as np
import torch

# NHWC convolutions: tensor cores on CUDA, oneDNN on CPU (measured 25-30% faster steps on 2 CPU cores)
_CHANNELS_LAST = ("cuda", "cpu")


def select_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("parameter device='cuda' is invalid: no CUDA device is available; use 'auto' or 'cpu'")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("parameter device='mps' is invalid: no MPS device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def channels_last(device: torch.device) -> bool:
    """Whether models and their inputs use the channels_last layout on ``device``: training, test-time
    features and the served model decide it here, so all three run the same kernels."""
    return device.type in _CHANNELS_LAST


def to_layout(x: torch.Tensor) -> torch.Tensor:
    """A (N, C, H, W) batch in the layout the model uses on its device (a no-op where that is NCHW)."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last(x.device) else x
