"""Training throughput: con2lib's on-device view pipeline against a per-sample PIL DataLoader and the model alone.

    python -m benchmarks.train_throughput [--device cpu|cuda] [--size 32|224] [--quick] [--compile]

Prints views/s, side by side and interleaved round by round (so that load from other processes hits
all three alike), for

(a) con2lib's training step: ``train.fit`` for a fixed number of steps (uint8 images on the device,
    batched context + content augmentations, model, CON2 loss, fused AdamW);
(b) the same model and step fed the way most contrastive repositories feed it: torchvision PIL
    transforms per sample in DataLoader workers (one per CPU core), 4 views per image;
(c) the same step on ready tensors (the upper bound for any pipeline);
(d) (c) without measuring the learning signal (``train_step(measure=False)``): d/c - 1 is the cost of
    the per-step ``grad_context`` / ``grad_content`` of :mod:`con2lib.method.learning_signal`;

then the ratios a/c and a/b (medians of the per-round ratios), the content augmentation alone
against kornia.augmentation (if installed), and the model's FLOP/s (FlopCounterMode, forward +
backward) as a fraction of a large float32 matmul's measured rate on the device. The last line is
``pipeline_vs_model=<a/c> vs_reference=<a/b> matmul_peak_fraction=<x> signal_cost=<d/c - 1>``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from con2lib.config import Config
from con2lib.method import train
from con2lib.method.device import seed_everything, select_device
from con2lib.method.models import build_model
from con2lib.method.views import content_augment_for, make_views

# realistic model sizes per (device, image size): width, stem, images per step (4 views each)
SETUPS = {
    ("cpu", 32): (0.25, "cifar", 64),
    ("cpu", 224): (0.25, "imagenet", 16),
    ("cuda", 32): (1.0, "cifar", 256),
    ("cuda", 224): (1.0, "imagenet", 64),
}


def sync(device: torch.device) -> None:
    """Waits for queued device work, so that wall-clock timings are complete."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, n: int = 4096, reps: int = 3, dtype: torch.dtype = torch.float32) -> float:
    """Best FLOP/s of an (n x n) @ (n x n) matmul on the device: the reference 'peak'."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up (thread pool, cuBLAS handle)
    best = float("inf")
    for _ in range(reps if device.type == "cpu" else max(reps, 20)):  # GPU matmuls take milliseconds
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def device_name(device: torch.device) -> str:
    """GPU name, or the CPU model with the number of torch threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores"


class ReferenceViews(torch.utils.data.Dataset):
    """Per-sample PIL pipeline: t(x), t'(x), t(x^c), t'(x^c) with x^c the PIL-inverted image."""

    def __init__(self, images: torch.Tensor, size: int) -> None:
        from PIL import Image
        from torchvision import transforms as T

        self.images = [Image.fromarray(np.ascontiguousarray(img.permute(1, 2, 0).numpy())) for img in images]
        self.transform = T.Compose([
            T.RandomResizedCrop(size), T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(0.2),
            T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3),
        ])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import ImageOps

        x = self.images[i]
        xc = ImageOps.invert(x)
        return torch.stack([self.transform(x), self.transform(x), self.transform(xc), self.transform(xc)])


def reference_batches(images: torch.Tensor, size: int, batch: int, device: torch.device,
                      workers: int) -> Iterator[torch.Tensor]:
    """Endless (4 * batch, C, size, size) batches from a DataLoader, ordered as ``make_views``."""
    loader = torch.utils.data.DataLoader(ReferenceViews(images, size), batch_size=batch, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=True, prefetch_factor=2,
                                         pin_memory=device.type == "cuda")
    while True:
        for views in loader:  # (batch, 4, C, S, S) -> (4 * batch, C, S, S): view-major as make_views
            yield views.transpose(0, 1).reshape(-1, *views.shape[2:]).to(device, non_blocking=True)


def timed(device: torch.device, fn: Callable[[], None]) -> float:
    """Seconds ``fn`` takes, device work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def count_flops(cfg: Config, model: torch.nn.Module, views: torch.Tensor, contexts: torch.Tensor,
                ids: torch.Tensor) -> int:
    """FLOPs of one forward + backward pass of the model and the loss (optimiser excluded)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        _, z_context, z_content = model(views)
        total, _, _ = train._objective(cfg, z_context, z_content, contexts, ids, 0.5)
        total.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def kornia_line(cfg: Config, views_per_batch: int, device: torch.device, reps: int) -> str:
    """ContentAugment against kornia's per-sample augmentations on the same batch, or why it was skipped."""
    try:
        import kornia.augmentation as K
    except ImportError:
        return "augmentation vs kornia: skipped (kornia is not installed: pip install kornia)"
    size = cfg.image_size
    x = torch.rand(views_per_batch, 3, size, size, device=device)
    ours = content_augment_for(cfg)
    gen = torch.Generator(device=device).manual_seed(0)
    theirs = torch.nn.Sequential(
        K.RandomResizedCrop((size, size), scale=(cfg.crop_scale_min, 1.0)), K.RandomHorizontalFlip(),
        K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=cfg.jitter_p), K.RandomGrayscale(p=cfg.grayscale_p)).to(device)
    t_ours, t_kornia = [], []
    for _ in range(reps + 1):  # interleaved; the first round warms up
        t_ours.append(timed(device, lambda: ours(x, gen)))
        t_kornia.append(timed(device, lambda: theirs(x)))
    a, k = min(t_ours[1:]), min(t_kornia[1:])
    return (f"augmentation of {views_per_batch} views at {size} px (best of {reps}): con2lib ContentAugment "
            f"{1e3 * a:.1f} ms, kornia.augmentation {1e3 * k:.1f} ms (kornia / con2lib = {k / a:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", type=int, default=32, choices=[32, 224])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps (about a minute on 2 CPU cores)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (all three variants)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DataLoader workers of (b)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    rounds, steps = (3, 3) if args.quick else (5, 8)
    width, stem, batch = SETUPS[(device.type, args.size)]
    cfg = Config(image_size=args.size, width=width, stem=stem, batch_size=batch, context="invert", epochs=1,
                 compile=args.compile, device=device.type)
    views_per_step = 4 * batch
    seed_everything(0)
    images = torch.randint(0, 256, (steps * batch, 3, args.size, args.size), dtype=torch.uint8)
    on_device = images.to(device)
    model = build_model(cfg, 3).to(device)

    print(f"device: {device.type} ({device_name(device)}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads")
    print(f"model: ResNet18 width {width}, {stem} stem, {args.size} px, 3 channels, {batch} images = "
          f"{views_per_step} views per step, context invert, compile {args.compile}"
          + (", bf16 autocast" if device.type == "cuda" else ", float32") + ", channels_last, fused AdamW")

    # (c): the training step on views made once
    forward = train.prepare_model(cfg, model, device)
    optimizer = train.make_optimizer(cfg, model, device)
    views, contexts, ids = make_views(on_device[:batch], cfg, content_augment_for(cfg), None)

    def run_a() -> None:
        train.fit(cfg, model, on_device, progress=False)  # steps_per_epoch = steps

    def run_c(source: Callable[[], torch.Tensor] = lambda: views, measure: bool = True) -> None:
        for _ in range(steps):
            train.train_step(cfg, forward, optimizer, source(), contexts, ids, 0.5, measure=measure)

    def run_d() -> None:
        run_c(measure=False)

    ref = reference_batches(images, args.size, batch, device, args.workers)
    warm_b = 2 * args.workers + 1  # drains what the workers prefetched while (a) and (c) ran: steady state

    def run_b() -> None:
        run_c(lambda: next(ref))

    def warm_up_b() -> None:
        for _ in range(warm_b):
            train.train_step(cfg, forward, optimizer, next(ref), contexts, ids, 0.5)

    run_a(), run_c(), warm_up_b()  # warm-up: allocator, oneDNN / cuDNN plans, compilation, workers
    rates: dict[str, list[float]] = {"a": [], "b": [], "c": [], "d": []}
    peaks = []  # one matmul per round too: the best is the machine's peak even if load comes and goes
    for r in range(rounds):
        peaks.append(matmul_peak(device, n=8192 if device.type == "cuda" else 4096, reps=1))
        rates["a"].append(steps * views_per_step / timed(device, run_a))
        rates["c"].append(steps * views_per_step / timed(device, run_c))
        rates["d"].append(steps * views_per_step / timed(device, run_d))
        warm_up_b()
        rates["b"].append(steps * views_per_step / timed(device, run_b))
        now = ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items())
        print(f"  round {r + 1}/{rounds}: {now} views/s", flush=True)

    flops = count_flops(cfg, model, views, contexts, ids)
    peak = max(peaks + [matmul_peak(device, n=8192 if device.type == "cuda" else 4096)])
    med = {k: statistics.median(v) for k, v in rates.items()}
    a_c = statistics.median(a / c for a, c in zip(rates["a"], rates["c"], strict=True))
    a_b = statistics.median(a / b for a, b in zip(rates["a"], rates["b"], strict=True))
    signal_cost = statistics.median(d / c - 1 for c, d in zip(rates["c"], rates["d"], strict=True))
    model_rate = flops / views_per_step * med["a"]  # model FLOP/s while (a) runs (median round; peak: best)
    print(f"{rounds} rounds x {steps} steps; views/s as median over rounds [best]:")
    labels = {"a": f"(a) con2lib training step (train.fit, views made on {device.type})",
              "b": f"(b) reference: PIL per sample, DataLoader with {args.workers} workers",
              "c": "(c) model alone on ready tensors (upper bound)",
              "d": "(d) (c) without measuring the learning signal"}
    for k, label in labels.items():
        print(f"{label:<62} {med[k]:9.0f} [{max(rates[k]):.0f}]")
    print(f"model: {flops / 1e9:.1f} GFLOP per step (forward + backward); float32 matmul peak {peak / 1e9:.0f} "
          f"GFLOP/s; (a) runs the model at {model_rate / 1e9:.1f} GFLOP/s, "
          f"(c) at {flops / views_per_step * med['c'] / 1e9:.1f}")
    if device.type == "cuda":
        bf16 = matmul_peak(device, n=8192, dtype=torch.bfloat16)
        print(f"bf16 matmul peak {bf16 / 1e12:.0f} TFLOP/s: (a) at {model_rate / bf16:.2f} of it")
    print(f"learning signal (grad_context, grad_content every step): {100 * signal_cost:+.1f}% step time (d/c - 1)")
    print(kornia_line(cfg, views_per_step, device, reps=3 if args.quick else 10))
    print(f"pipeline_vs_model={a_c:.2f} vs_reference={a_b:.2f} matmul_peak_fraction={model_rate / peak:.2f} "
          f"signal_cost={signal_cost:.3f}")


if __name__ == "__main__":
    main()
