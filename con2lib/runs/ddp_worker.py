"""A torchrun rank > 0 under ``con2 run``: join rank 0, receive the config and images, train alongside it.

Above :mod:`con2lib.method.train`, which trains as one rank through :mod:`con2lib.method.distributed` (docs/sweeps.md,
"Multi-GPU").
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch import nn

from con2lib.config import Config
from con2lib.method.distributed import join, local_device, receive_inputs
from con2lib.method.train import fit
from con2lib.method.epochs import NonFiniteLossError
from con2lib.method.models import build_model
from con2lib.method.device import select_device


def train_worker(device: torch.device) -> nn.Module:
    """A worker's whole job: join rank 0, receive what to train, train (rank 0 logs and checkpoints).

    Returns:
        The trained model (equal to rank 0's).
    """
    group = join(device)
    if group is None:
        raise RuntimeError("a torchrun worker found no process group (WORLD_SIZE <= 1)")
    cfg_dict, images = receive_inputs(group, device)
    cfg = Config.from_params(cfg_dict)
    model = build_model(cfg, in_channels=images.shape[1]).to(device)  # DDP gives it rank 0's weights
    fit(cfg, model, images, progress=False)
    return model


def worker_main(device_name: str = "auto") -> int:
    """``con2 run`` on a torchrun rank > 0; returns its exit code.

    A non-finite loss stops every rank at the same step; rank 0 reports it and ends the run FAILED,
    so a worker exits 0 then (a non-zero exit would make torchrun kill rank 0 before it records it).
    """
    kind = select_device(device_name).type
    try:
        train_worker(local_device(kind))
    except NonFiniteLossError as err:
        print(f"con2 run (rank {os.environ.get('RANK')}): {err}", file=sys.stderr)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0
