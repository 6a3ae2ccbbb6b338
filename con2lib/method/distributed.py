"""One run on several GPUs (or CPU processes) with torchrun and DistributedDataParallel.

    torchrun --nproc_per_node=4 -m con2lib.cli run params/x.yaml -p epochs 100

Every process torchrun starts runs ``con2 run``. Rank 0 runs it as usual: it creates (or resumes) the
MLflow run and executes the notebook; the notebook's kernel inherits torchrun's environment, so its
:func:`con2lib.method.train.fit` joins the process group as rank 0. The other ranks are *workers*
(:func:`con2lib.runs.ddp_worker.worker_main`): they receive the config, the training images and
the resume state from rank 0, train their share of every step and exit. Only rank 0 reads data,
logs, writes checkpoints and scores.

The result equals a one-process run on the same global batch (``batch_size`` stays the global batch):

- every rank draws the same views of the whole batch from the same seeded generator (it augments the
  whole batch: the price of the single-process random numbers) and forwards its ``1/world`` slice;
- the projections of all ranks are gathered with a differentiable all-gather in rank order, so
  every rank computes the loss on exactly the single-process views, with the single-process labels
  (contexts and sample ids are those of the whole batch, hence globally unique);
- BatchNorm normalises with the statistics of the whole batch (torch's SyncBatchNorm on CUDA,
  :class:`GlobalBatchNorm` elsewhere), as the single process does;
- the backward of the gather (and of the BatchNorm statistics) sums the gradients of all ranks'
  identical losses, which makes each rank's gradient ``world`` times its views' share; DDP's mean
  over ranks then gives exactly the single-process gradient, with no extra factor.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def env_world_size() -> int:
    """The number of processes torchrun started (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_worker() -> bool:
    """True in a process of rank > 0 under torchrun: it trains, rank 0 does everything else."""
    return env_world_size() > 1 and int(os.environ.get("RANK", "0")) > 0


def local_device(kind: str) -> torch.device:
    """This process's device under torchrun: ``cuda:LOCAL_RANK`` on GPUs, else the CPU."""
    if kind == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks. Every rank's loss depends on every rank's input, so the backward sums too."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _AllGather(torch.autograd.Function):
    """Rows of all ranks concatenated in rank order; the backward sums every rank's gradient of this rank's rows."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # a reduce-scatter in effect; the projections are small
        size = len(grad) // dist.get_world_size()
        rank = dist.get_rank()
        return grad[rank * size:(rank + 1) * size]


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the whole batch across all ranks.

    torch's SyncBatchNorm does this on GPUs only; this one serves CPU process groups (gloo). The sums
    are reduced with a differentiable all-reduce, so gradients flow to every rank's inputs.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalises with the global batch statistics in training, with the running ones in eval."""
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        c = x.shape[1]
        # one all-reduce of [sum, sum of squares, count], accumulated in float64 so that E[x^2] - E[x]^2 keeps
        # the precision of the single-process two-pass variance
        local = torch.cat([x.sum(dims, dtype=torch.float64), (x * x).sum(dims, dtype=torch.float64),
                           x.new_full((1,), x.numel() // c, dtype=torch.float64)])
        total = _AllReduceSum.apply(local)
        n = total[-1]
        mean = total[:c] / n
        var = (total[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - m).add_(m * (var * n / (n - 1)).to(self.running_var.dtype))
        y = (x - mean.to(x.dtype).view(shape)) * torch.rsqrt(var.to(x.dtype).view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


@dataclass
class Group:
    """This process's place in the process group, and the collective steps training needs.

    Attributes:
        rank, world: this process's rank and the number of processes.
        owned: the group was created by :func:`join`, so :meth:`close` destroys it.
    """

    rank: int
    world: int
    owned: bool = False
    _undo: list[Callable[[], None]] = field(default_factory=list)

    def local(self, views: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of the whole batch's views.

        Raises:
            ValueError: the views do not split evenly (the all-gather needs equal slices).
        """
        size, rest = divmod(len(views), self.world)
        if rest:
            raise ValueError(f"{len(views)} views per step do not split over {self.world} processes: choose a "
                             "batch_size whose views per step (2 per context and image) are a multiple of it")
        return views[self.rank * size:(self.rank + 1) * size]

    def gather(self, *parts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The rows of all ranks, in rank order (the single-process order), differentiably; one collective."""
        joined = torch.cat(parts, dim=1)
        every = _AllGather.apply(joined)
        return tuple(every.split([p.shape[1] for p in parts], dim=1))

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` summed over the ranks, without a gradient (per-step statistics of the whole batch)."""
        x = x.detach().clone()
        dist.all_reduce(x)
        return x

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (small objects: configs, training states)."""
        box = [value if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` with global BatchNorm statistics, in DistributedDataParallel (undone by :meth:`close`)."""
        device = next(model.parameters()).device
        self._undo.append(sync_batchnorm(model, device))
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def close(self) -> None:
        """Puts the model's own BatchNorm modules back; leaves the group if :func:`join` created it."""
        while self._undo:
            self._undo.pop()()
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()


def join(device: torch.device) -> Group | None:
    """This process's group: the initialised one, or torchrun's (from its environment); None when alone.

    NCCL on CUDA (one GPU per process: ``device`` is this process's), gloo on the CPU.
    """
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        return Group(dist.get_rank(), world) if world > 1 else None
    if env_world_size() <= 1:
        return None
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    if dist.get_rank() == 0:
        print(f"training with DistributedDataParallel on {dist.get_world_size()} processes ({backend})", flush=True)
    return Group(dist.get_rank(), dist.get_world_size(), owned=True)


def sync_batchnorm(model: nn.Module, device: torch.device) -> Callable[[], None]:
    """Replaces every BatchNorm of ``model`` by a synchronised one sharing its parameters and buffers.

    The modules are swapped in place (their state_dict names are unchanged, so checkpoints stay
    plain); the returned function puts the originals back, which hold the trained values already.
    """
    cls = nn.SyncBatchNorm if device.type == "cuda" else GlobalBatchNorm
    swapped = []
    for parent in list(model.modules()):
        for name, bn in list(parent.named_children()):
            if isinstance(bn, nn.modules.batchnorm._BatchNorm) and not isinstance(bn, (nn.SyncBatchNorm,
                                                                                         GlobalBatchNorm)):
                synced = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
                with torch.no_grad():  # share, not copy: what the synced module learns is the original's
                    if bn.affine:
                        synced.weight, synced.bias = bn.weight, bn.bias
                    synced.running_mean, synced.running_var = bn.running_mean, bn.running_var
                    synced.num_batches_tracked = bn.num_batches_tracked
                synced.train(bn.training)
                setattr(parent, name, synced)
                swapped.append((parent, name, bn))

    def undo() -> None:
        for parent, name, bn in swapped:
            setattr(parent, name, bn)

    return undo


def send_inputs(group: Group, cfg_dict: dict[str, Any], images: torch.Tensor) -> None:
    """Rank 0: gives the workers the config and the training images (:func:`receive_inputs`)."""
    group.broadcast({"config": cfg_dict, "shape": list(images.shape)})
    dist.broadcast(images.contiguous(), src=0)


def receive_inputs(group: Group, device: torch.device) -> tuple[dict[str, Any], torch.Tensor]:
    """A worker: the config and the training images of rank 0's :func:`send_inputs`."""
    header = group.broadcast(None)
    images = torch.empty(header["shape"], dtype=torch.uint8, device=device)
    dist.broadcast(images, src=0)
    return header["config"], images


__all__ = ["GlobalBatchNorm", "Group", "env_world_size", "is_worker", "join", "local_device", "receive_inputs",
           "send_inputs", "sync_batchnorm"]
