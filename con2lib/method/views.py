"""The views the method sees: training views of section 3.2 and the test-time views of eq. 16.

Training (:func:`make_views`): each of N images and its context copies t_c(x) under two content
augmentations t, t' drawn from the SimCLR set T, labelled by context and by source image.
Test time (:func:`tta_views`): A fixed transformations, A/K of x and A/K of each context copy, each
applied alike to the training bank and the test images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from con2lib.config import Config
from con2lib.method.augment import ContentAugment, context_augment


def content_augment_for(cfg: Config) -> ContentAugment:
    """The SimCLR content augmentation with the config's strengths."""
    return ContentAugment(size=cfg.image_size, crop_scale=(cfg.crop_scale_min, 1.0), hflip_p=cfg.hflip_p,
                          jitter_strength=cfg.jitter_strength, jitter_p=cfg.jitter_p, grayscale_p=cfg.grayscale_p,
                          blur_p=cfg.blur_p)


def make_views(x: torch.Tensor, cfg: Config, augment: ContentAugment,
               generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views of a batch and their labels.

    Args:
        x: uint8 (N, C, H, W) images on the training device.

    Returns:
        views: float (4N, C, S, S) normalised views [t(x), t'(x), t(x^c), t'(x^c)]
            ((2N, ...) [t(x), t'(x)] for the SimCLR baseline);
        context_labels: (4N,) 0 for views of x, 1 for views of t_c(x);
        sample_ids: (4N,) index of the source image within the batch.
    """
    n = x.shape[0]
    xf = x.float().div_(255.0)
    ids = torch.arange(n, device=x.device)
    # augment(base, index=...) equals augment(base[index]) without copying each image 2 or 4 times
    # normalized=True: normalize() applied inside the augmentation, while the data is in cache
    if cfg.loss == "simclr":
        views = augment(xf, generator, index=ids.repeat(2), normalized=True)
        return views, torch.zeros(2 * n, dtype=torch.long, device=x.device), ids.repeat(2)
    base = torch.cat([xf] + [context_augment(xf, c) for c in cfg.contexts])  # [x, x^c1, ...]: K contexts
    k = cfg.n_contexts
    views = augment(base, generator, index=torch.cat([ids + c * n for c in range(k) for _ in (0, 1)]), normalized=True)
    contexts = torch.arange(k, device=x.device).repeat_interleave(2 * n)
    return views, contexts, ids.repeat(2 * k)


@dataclass(frozen=True)
class View:
    """One test-time augmentation: the context it scores ("" = x itself), and its content augmentation."""

    context: str
    augment: bool
    seed: int


def tta_views(cfg: Config) -> list[View]:
    """The A views of eq. 16: A/K of x, then A/K of each scored context copy (``cfg.views_per_context``).

    ``tta: 0`` is one un-augmented view per scored context, whatever ``tta_identity`` says.
    """
    per = cfg.views_per_context
    names = ("",) + cfg.contexts  # SimCLR: views_per_context = A, so every view is of x
    return [View(context=names[i // per], augment=cfg.tta > 0 and not (cfg.tta_identity and i % per == 0),
                 seed=cfg.seed * 1000 + i) for i in range(cfg.n_views)]


def plain_view_indices(cfg: Config) -> list[int | None]:
    """Which scored views are the un-augmented x and first context copy (None: not among them)."""
    views, ctx = tta_views(cfg), cfg.context_view
    first = 0 if not views[0].augment else None
    return [first, ctx if ctx is not None and not views[ctx].augment else None]
