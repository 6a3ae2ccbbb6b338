"""The CON2 training loop: views, losses, optimiser, schedules. Read top to bottom.

Each step takes N normal images (uint8, already on the device), builds the 4N views of section 3.2
(two content augmentations of x and two of its context copy t_c(x):
:func:`con2lib.method.views.make_views`), passes them through the encoder and both heads, and
minimises L = L_context + alpha * L_content. Loss values stay on the device during an epoch and are
read once at its end, so the step never waits for the host.

Speed: the views are made batched on the training device (no DataLoader, no per-sample Python);
the model runs channels_last (CUDA, CPU), in bf16 autocast on CUDA, optionally ``torch.compile``d
(``cfg.compile``), with fused AdamW. ``benchmarks/train_throughput.py`` measures the result.

``fit`` resumes from its training checkpoint (:mod:`con2lib.method.checkpoint`) and, under torchrun,
trains as one rank of DistributedDataParallel (:mod:`con2lib.method.distributed`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict

import torch

from con2lib.config import Config
from con2lib.method import distributed
from con2lib.method.checkpoint import resume_training, save_checkpoint, training_state
from con2lib.method.device import channels_last, to_layout
from con2lib.method.epochs import EpochStats, NonFiniteLossError, epoch_line, steps_per_epoch, train_epochs
from con2lib.method.learning_signal import context_solved, term_gradients, warn_if_context_solved
from con2lib.method.losses import con2_loss, supcon_loss
from con2lib.method.models import Con2Model
from con2lib.method.schedules import cosine_lr, linear_alpha
from con2lib.method.views import content_augment_for, make_views


def fit(
    cfg: Config,
    model: Con2Model,
    train_images: torch.Tensor,
    on_epoch: Callable[[EpochStats, Con2Model], None] | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
) -> list[EpochStats]:
    """Trains ``model`` in place on the normal images.

    Args:
        cfg: run configuration.
        model: encoder and heads, already on the training device.
        train_images: uint8 (N, C, H, W) normal training images on the training device.
        on_epoch: called after every epoch with its statistics and the model (logging).
        progress: show a progress bar (text, so an executed notebook keeps it finished) and print one
            line per epoch (:func:`con2lib.method.epochs.epoch_line`), which ``con2 run`` echoes to the terminal.
        checkpoint: path of the training checkpoint (model, optimiser, scheduler, RNG states:
            :func:`con2lib.method.checkpoint.training_state`), written every ``cfg.checkpoint_every`` epochs and
            after the last, once ``on_epoch`` returned. If it already holds one of this config, training
            continues after its epoch and ends exactly as an uninterrupted run (docs/sweeps.md, "Resume").

    Under torchrun (``WORLD_SIZE`` > 1) this process is one rank of DistributedDataParallel
    (:mod:`con2lib.method.distributed`): ``cfg.batch_size`` stays the global batch, and only rank 0 calls
    ``on_epoch`` and writes the checkpoint.

    Returns:
        The statistics of every epoch (for a resumed run, those before it come from the checkpoint).

    Raises:
        NonFiniteLossError: a loss became NaN or infinite (the epoch and step are named).
        ValueError: ``checkpoint`` holds the training state of other parameters.
    """
    # the text bar: a widget bar is stored in an executed notebook as its first state (0%)
    from tqdm import tqdm

    device = train_images.device
    group = distributed.join(device)
    lead = group is None or group.rank == 0  # the process that logs and checkpoints
    if group is not None and lead:
        distributed.send_inputs(group, cfg.to_dict(), train_images)
    n = len(train_images)
    batch = min(cfg.batch_size, n)
    steps = steps_per_epoch(cfg, n)
    epochs = train_epochs(cfg, n)
    total_steps = epochs * steps
    optimizer = make_optimizer(cfg, model, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_lr(s, total_steps, 1.0))
    augment = content_augment_for(cfg)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    try:
        done, step, saved = resume_training(checkpoint if lead else None, cfg.to_dict(), model, optimizer, scheduler,
                                            generator, share=group.broadcast if group is not None else None)
        history = [EpochStats(**h) for h in saved]
        warned = context_solved(cfg, history, epochs) is not None  # said before the interruption
        forward = prepare_model(cfg, model, device, wrap=group.wrap if group is not None else None)
        bar = tqdm(range(done + 1, epochs + 1), desc="training", unit="epoch", disable=not progress,
                   initial=done, total=epochs, file=sys.stderr)
        began = time.perf_counter()
        for epoch in bar:
            model.train()
            start = time.perf_counter()
            order = torch.randperm(n, device=device, generator=generator)
            sums = torch.zeros(5, device=device)
            measured = 0
            losses = []
            alpha = 0.0
            for i in range(steps):
                alpha = linear_alpha(step, total_steps, cfg.alpha_start, cfg.alpha_end)
                views, contexts, ids = make_views(train_images[order[i * batch:(i + 1) * batch]], cfg, augment,
                                                  generator)
                # a compiled model's backward is one graph: measuring there costs two more full backwards
                measure = not cfg.compile or i == 0
                parts = train_step(cfg, forward, optimizer, views, contexts, ids, alpha, group, measure)
                scheduler.step()
                step += 1
                sums += parts
                measured += measure
                losses.append(parts[0])
            values = torch.stack(losses).cpu()  # the one host-device synchronisation of the epoch
            bad = torch.nonzero(~torch.isfinite(values))
            if len(bad):
                first = int(bad[0])
                raise NonFiniteLossError(epoch, (epoch - 1) * steps + first + 1, float(values[first]))
            mean = (sums[:3] / steps).tolist() + (sums[3:] / measured).tolist()
            seconds = time.perf_counter() - start
            stats = EpochStats(epoch, mean[0], mean[1], mean[2], alpha, scheduler.get_last_lr()[0],
                               steps * batch / seconds, mean[3], mean[4])
            history.append(stats)
            bar.set_postfix(loss=f"{stats.loss:.4f}", img_s=f"{stats.images_per_s:.0f}")
            if progress and lead:
                print(epoch_line(stats, epochs, time.perf_counter() - began, epoch - done), flush=True)
            if lead and not warned:
                warned = warn_if_context_solved(cfg, history, epochs)
            if lead and on_epoch is not None:
                on_epoch(stats, model)
            # after on_epoch: a run killed in between resumes from the previous checkpoint and logs no gap
            if lead and checkpoint is not None and (epoch % cfg.checkpoint_every == 0 or epoch == epochs):
                save_checkpoint(checkpoint, training_state(cfg.to_dict(), model, optimizer, scheduler, generator,
                                                           epoch, step, [asdict(h) for h in history]))
    finally:
        if group is not None:
            group.close()
    return history


def make_optimizer(cfg: Config, model: torch.nn.Module, device: torch.device) -> torch.optim.AdamW:
    """AdamW as in the paper; the fused kernel (one launch for all parameters) on CUDA and CPU."""
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay,
                             fused=fused)


def prepare_model(cfg: Config, model: Con2Model, device: torch.device,
                  wrap: Callable[[Con2Model], torch.nn.Module] | None = None) -> Callable[[torch.Tensor], tuple]:
    """The model as the training step calls it: channels_last on CUDA and CPU, compiled when ``cfg.compile``.

    ``wrap`` (DistributedDataParallel, :meth:`con2lib.method.distributed.Group.wrap`) is applied after the
    conversion to channels_last, which would otherwise replace the tensors DDP has registered.

    On CUDA this also turns on cuDNN's autotuner (process-wide: the steps' shapes never change).

    Returns a callable with the model's signature; ``model`` itself (its ``state_dict`` names) is
    unchanged, so checkpoints of a compiled run load into a plain model.
    """
    if channels_last(device):
        model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every step has the same shapes: pick the fastest kernels once
    net = wrap(model) if wrap is not None else model
    return torch.compile(net) if cfg.compile else net


def train_step(cfg: Config, forward: Callable[[torch.Tensor], tuple], optimizer: torch.optim.Optimizer,
               views: torch.Tensor, contexts: torch.Tensor, ids: torch.Tensor, alpha: float,
               group: distributed.Group | None = None, measure: bool = True) -> torch.Tensor:
    """One optimiser step on ready views; never waits for the device.

    Args:
        forward: the model as returned by :func:`prepare_model`.
        views: float (V, C, S, S) normalised views; contexts, ids: (V,) labels
            (see :func:`con2lib.method.views.make_views`).
        alpha: weight of L_content.
        group: under DDP, the rank forwards only its slice of ``views``, and the loss is computed on the
            projections of all ranks gathered in order: the single-process loss of all ``views``.
        measure: also measure the gradient each term puts on the encoder (:func:`term_gradients`;
            zeros when False).

    Returns:
        (5,) detached [total, L_context, L_content, grad_context, grad_content] on the device (under
        DDP, of the whole batch: the gradient sizes are summed over the ranks, one small collective).
    """
    cuda = views.device.type == "cuda"
    if group is not None:
        views = group.local(views)  # before the layout change: each rank converts only its own slice
    views = to_layout(views)
    with torch.autocast(views.device.type, dtype=torch.bfloat16, enabled=cuda):
        h, z_context, z_content = forward(views)
    z_context, z_content = z_context.float(), z_content.float()
    if group is not None:
        z_context, z_content = group.gather(z_context, z_content)
    total, l_context, l_content = _objective(cfg, z_context, z_content, contexts, ids, alpha)
    if group is not None and cfg.loss != "con2":
        # DDP waits for a gradient of every parameter: the head this loss ignores gets zeros (exactly)
        total = total + 0.0 * (z_context.sum() + z_content.sum())
    grads = term_gradients(h, (l_context, l_content), group.sum if group is not None else None) if measure \
        else total.new_zeros(2)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return torch.cat([torch.stack([total.detach(), l_context.detach(), l_content.detach()]), grads])


def _objective(cfg: Config, z_context: torch.Tensor, z_content: torch.Tensor, contexts: torch.Tensor,
               ids: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss the config asks for, with both CON2 terms returned for logging."""
    if cfg.loss == "simclr":
        loss = supcon_loss(z_content, ids, cfg.temperature)
        return loss, torch.zeros_like(loss), loss
    total, l_context, l_content = con2_loss(z_context, z_content, contexts, ids, alpha, cfg.temperature)
    if cfg.loss == "context_only":
        total = l_context
    elif cfg.loss == "content_only":
        total = l_content
    return total, l_context, l_content


__all__ = ["fit", "make_optimizer", "prepare_model", "train_step"]
