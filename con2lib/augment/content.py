"""Content augmentations T (the SimCLR set), batched on tensors with per-sample random parameters.

torchvision's transforms draw one set of random parameters per call, so a batch would share one
crop; contrastive views need a different crop and jitter per image. Here every image gets its own
parameters, drawn as tensors on the images' device, and the whole batch is transformed with one
``affine_grid`` + ``grid_sample`` (crop, resize and horizontal flip together) and a few
element-wise operations (colour jitter, grayscale), with no per-sample Python loop.

Differences from torchvision's SimCLR pipeline, kept on purpose for speed: a crop whose sampled
width or height exceeds the image is clamped to the image instead of being re-drawn; the four
jitter operations run in a fixed order (brightness, contrast, saturation, hue) instead of a random
one; hue is rotated in YIQ space (a 3x3 matrix per image) instead of through HSV.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Maps [0, 1] images to [-1, 1] (mean 0.5, std 0.5, paper appendix D)."""
    return (x - 0.5) / 0.5


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 1, H, W) luma; a one-channel image is returned as it is."""
    if x.shape[1] == 1:
        return x
    w = x.new_tensor(_GRAY).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


@dataclass(frozen=True)
class ContentAugment:
    """SimCLR augmentations: random resized crop, horizontal flip, colour jitter, grayscale.

    Args:
        size: output height and width.
        crop_scale: range of the crop's area as a fraction of the image.
        crop_ratio: range of the crop's aspect ratio (width / height).
        hflip_p: probability of a horizontal flip.
        jitter_strength: SimCLR's colour strength s: brightness, contrast and saturation factors
            in [1 - 0.8 s, 1 + 0.8 s], hue shift in [-0.2 s, 0.2 s] turns.
        jitter_p: probability that colour jitter is applied to an image.
        grayscale_p: probability that an image is turned to grayscale (colour images only).
    """

    size: int
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    jitter_strength: float = 0.5
    jitter_p: float = 0.8
    grayscale_p: float = 0.2

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None, shared: bool = False) -> torch.Tensor:
        """Augments a batch.

        Args:
            x: float (B, C, H, W) images in [0, 1].
            generator: random generator on ``x.device`` (None: the global one).
            shared: draw one set of parameters for the whole batch (a fixed test-time augmentation).

        Returns:
            float (B, C, size, size) images in [0, 1].
        """
        b = x.shape[0]
        n = 1 if shared else b
        # columns: crop area, ratio, x, y, flip | brightness, contrast, saturation, hue, jitter on | gray
        u = torch.rand(n, 11, device=x.device, dtype=torch.float32, generator=generator).expand(b, 11)
        x = self._crop_flip(x, u[:, 0], u[:, 1], u[:, 2], u[:, 3], u[:, 4])
        x = self._jitter(x, u[:, 5:10])
        if x.shape[1] == 3 and self.grayscale_p > 0:
            gray = (u[:, 10] < self.grayscale_p).view(-1, 1, 1, 1)
            x = torch.where(gray, grayscale(x).expand_as(x), x)
        return x

    def _crop_flip(self, x: torch.Tensor, ua: torch.Tensor, ur: torch.Tensor, ux: torch.Tensor,
                   uy: torch.Tensor, uf: torch.Tensor) -> torch.Tensor:
        lo, hi = self.crop_scale
        area = lo + (hi - lo) * ua
        log_lo, log_hi = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
        ratio = torch.exp(log_lo + (log_hi - log_lo) * ur)
        # crop width / height as fractions of the image
        w = torch.sqrt(area * ratio).clamp(max=1.0)
        h = torch.sqrt(area / ratio).clamp(max=1.0)
        # centre in normalised [-1, 1] coordinates, crop fully inside the image
        cx = (2 * ux - 1) * (1 - w)
        cy = (2 * uy - 1) * (1 - h)
        sign = torch.where(uf < self.hflip_p, -1.0, 1.0)
        theta = torch.zeros(x.shape[0], 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0] = (w * sign).to(x.dtype)
        theta[:, 0, 2] = cx.to(x.dtype)
        theta[:, 1, 1] = h.to(x.dtype)
        theta[:, 1, 2] = cy.to(x.dtype)
        grid = F.affine_grid(theta, [x.shape[0], x.shape[1], self.size, self.size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def _jitter(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        s = self.jitter_strength
        if s <= 0 or self.jitter_p <= 0:
            return x
        apply = u[:, 4] < self.jitter_p
        factors = 1 + 0.8 * s * (2 * u[:, :3] - 1)  # brightness, contrast, saturation
        factors = torch.where(apply[:, None], factors, torch.ones_like(factors)).to(x.dtype)
        bri, con, sat = (factors[:, i].view(-1, 1, 1, 1) for i in range(3))
        x = (x * bri).clamp_(0, 1)
        mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * con + mean).clamp_(0, 1)
        if x.shape[1] != 3:
            return x
        x = ((x - grayscale(x)) * sat + grayscale(x)).clamp_(0, 1)
        hue = torch.where(apply, 0.2 * s * (2 * u[:, 3] - 1), torch.zeros_like(u[:, 3]))
        return _rotate_hue(x, hue * 2 * math.pi)


def _rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotates the chroma plane of YIQ by ``angle`` radians per image: (B, 3, H, W) -> same."""
    yiq = x.new_tensor(_RGB_TO_YIQ)
    rgb = torch.linalg.inv(yiq)
    cos, sin = torch.cos(angle).to(x.dtype), torch.sin(angle).to(x.dtype)
    rot = torch.zeros(x.shape[0], 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2] = cos, -sin
    rot[:, 2, 1], rot[:, 2, 2] = sin, cos
    m = rgb @ rot @ yiq  # (B, 3, 3)
    y = torch.einsum("bij,bjhw->bihw", m, x)
    return y.clamp_(0, 1)
