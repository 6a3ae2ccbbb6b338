"""Content augmentations T (the SimCLR set), batched on tensors with per-sample random parameters.

torchvision's transforms draw one set of random parameters per call, so a batch would share one
crop; contrastive views need a different crop and jitter per image. Here every image gets its own
parameters, drawn as tensors on the images' device, and the whole batch is transformed with no
per-sample Python loop:

1. random resized crop + horizontal flip: one ``grid_sample`` (bilinear) over a sampling grid built
   directly from each image's scale and offset (the crop is axis-aligned, so the grid is an outer
   sum of two 1-D coordinate vectors and ``affine_grid``'s matrix product is not needed);
2. colour jitter, with probability ``jitter_p`` per image, in the fixed order brightness, contrast,
   saturation, hue, clamping to [0, 1] after each as torchvision does. Brightness and contrast are
   per-image scalars; saturation and hue are each one per-image 3x3 colour matrix applied with one
   batched matrix product;
3. grayscale with probability ``grayscale_p`` per image (colour images only): one more per-image
   3x3 matrix (luma weights in every row, or the identity);
4. Gaussian blur with probability ``blur_p`` per image (SimCLR's ImageNet recipe: p 0.5, sigma in
   [0.1, 2] px, kernel 10% of the image side): two depthwise convolutions (rows, then columns) with
   one kernel per image; images not blurred get the one-tap identity kernel, so no image is
   selected (no device synchronisation). Off (``blur_p`` 0) it draws no random numbers: the other
   parameters stay those of a pipeline without blur.

On CPU the three steps run on groups of images of about 4 MB of output at a time (a loop over
groups, not samples), so that the element-wise colour passes hit the cache; the random parameters
are drawn for the whole batch first, so the result does not depend on the grouping. ``index``
makes several views of one image without copying the image first.

Differences from torchvision's SimCLR pipeline, kept on purpose for speed: a crop whose sampled
width or height exceeds the image is clamped to the image instead of being re-drawn; the crop is
resampled bilinearly without antialiasing; the four jitter operations run in a fixed order
(brightness, contrast, saturation, hue) instead of a random one; hue is rotated in YIQ space (a 3x3
matrix per image) instead of through HSV. Measured on 2 CPU cores (``benchmarks/train_throughput.py``,
``docs/benchmarks.md``): about 1% of a training step of a width-0.25 ResNet18 at 32 px, under 10% at
224 px, and 7-9x faster than kornia.augmentation's per-sample equivalents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_CPU_TILE_BYTES = 4 << 20  # output images augmented together on CPU: about the size of a core's cache share
_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))
# the inverse, once, in double precision (a 3x3 inverse per call would be a device round trip on MPS)
_YIQ_TO_RGB = tuple(map(tuple, torch.linalg.inv(torch.tensor(_RGB_TO_YIQ, dtype=torch.float64)).tolist()))


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Maps [0, 1] images to [-1, 1] (mean 0.5, std 0.5, paper appendix D); same values as (x - 0.5) / 0.5."""
    return x.mul(2.0).sub_(1.0)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 1, H, W) luma; a one-channel image is returned as it is."""
    if x.shape[1] == 1:
        return x
    w = x.new_tensor(_GRAY).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _mix(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-image colour matrix: (B, 3, 3) x (B, 3, H, W) -> (B, 3, H, W), one batched matmul."""
    b, c, h, w = x.shape
    return torch.bmm(m, x.reshape(b, c, h * w)).view(b, c, h, w)


@dataclass(frozen=True)
class ContentAugment:
    """SimCLR augmentations: random resized crop, horizontal flip, colour jitter, grayscale, blur.

    Args:
        size: output height and width.
        crop_scale: range of the crop's area as a fraction of the image.
        crop_ratio: range of the crop's aspect ratio (width / height).
        hflip_p: probability of a horizontal flip.
        jitter_strength: SimCLR's colour strength s: brightness, contrast and saturation factors
            in [1 - 0.8 s, 1 + 0.8 s], hue shift in [-0.2 s, 0.2 s] turns.
        jitter_p: probability that colour jitter is applied to an image.
        grayscale_p: probability that an image is turned to grayscale (colour images only).
        blur_p: probability of a Gaussian blur (sigma uniform in ``blur_sigma``, kernel side
            ``size // 10`` rounded to odd, reflect padding as torchvision's GaussianBlur).
        blur_sigma: range of the blur's standard deviation in output pixels.
    """

    size: int
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    jitter_strength: float = 0.5
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None, shared: bool = False,
                 index: torch.Tensor | None = None, normalized: bool = False) -> torch.Tensor:
        """Augments a batch.

        Args:
            x: float (N, C, H, W) images in [0, 1].
            generator: random generator on ``x.device`` (None: the global one).
            shared: draw one set of parameters for the whole batch (a fixed test-time augmentation).
            index: optional (B,) int64 source image of each output: the result equals
                ``self(x[index], ...)`` without materialising ``x[index]`` (several views of one image).
            normalized: return ``normalize(views)`` (in [-1, 1]), computed while each group is in cache.

        Returns:
            float (B, C, size, size) images in [0, 1] (in [-1, 1] if ``normalized``); B = len(index), else N.
        """
        b = x.shape[0] if index is None else len(index)
        n = 1 if shared else b
        # columns: crop area, ratio, x, y, flip | brightness, contrast, saturation, hue, jitter on | gray
        # | blur on, blur sigma (only with blur: without it the draws equal those of the blur-free pipeline)
        cols = 13 if self.blur_p > 0 else 11
        u = torch.rand(n, cols, device=x.device, dtype=torch.float32, generator=generator).expand(b, cols)
        group = b
        if x.device.type == "cpu":
            # a few images at a time, so that the ~10 element-wise passes of the colour operations run on
            # data in cache instead of main memory (2x faster at 224 px; one group at 32 px)
            group = max(1, _CPU_TILE_BYTES // (x.shape[1] * self.size**2 * x.element_size()))
        if group >= b:
            return self._augment(x if index is None else x[index], u, normalized)
        out = x.new_empty(b, x.shape[1], self.size, self.size)
        for start in range(0, b, group):
            rows = slice(start, start + group)
            out[rows] = self._augment(x[rows] if index is None else x[index[rows]], u[rows], normalized)
        return out

    def _augment(self, x: torch.Tensor, u: torch.Tensor, normalized: bool) -> torch.Tensor:
        """(B, C, H, W) images and their (B, 11) uniform draws -> (B, C, size, size) augmented images."""
        x = self._crop_flip(x, u[:, 0], u[:, 1], u[:, 2], u[:, 3], u[:, 4])
        x = self._jitter(x, u[:, 5:10])
        if x.shape[1] == 3 and self.grayscale_p > 0:
            gray = (u[:, 10] < self.grayscale_p).view(-1, 1, 1)
            luma = x.new_tensor(_GRAY).expand(3, 3)
            eye = torch.eye(3, device=x.device, dtype=x.dtype)
            x = _mix(torch.where(gray, luma, eye), x)  # rows of luma weights sum to 1: stays in [0, 1]
        if self.blur_p > 0:
            x = self._blur(x, u[:, 11], u[:, 12])
        # x is a new tensor here (grid_sample's or bmm's output): normalise in place, as normalize() does
        return x.mul_(2.0).sub_(1.0) if normalized else x

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
        # output pixel centres in [-1, 1] (align_corners=False), the same base grid as affine_grid's
        base = torch.linspace(-1 + 1 / self.size, 1 - 1 / self.size, self.size, device=x.device, dtype=x.dtype)
        gx = (w * sign).to(x.dtype)[:, None] * base + cx.to(x.dtype)[:, None]  # (B, S)
        gy = h.to(x.dtype)[:, None] * base + cy.to(x.dtype)[:, None]  # (B, S)
        b, s = x.shape[0], self.size
        grid = torch.stack([gx[:, None, :].expand(b, s, s), gy[:, :, None].expand(b, s, s)], dim=-1)
        # sample points lie inside the image, so "border" equals "reflection" here, and is cheaper
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _blur(self, x: torch.Tensor, on: torch.Tensor, us: torch.Tensor) -> torch.Tensor:
        """Per-image Gaussian blur: (B, C, S, S) -> same, images with ``on >= blur_p`` unchanged.

        The kernel exp(-k^2 / (2 sigma^2)) / sum, k in [-r, r], r = (size // 10) // 2 (SimCLR's
        kernel of 10% of the side), is separable: a horizontal then a vertical depthwise convolution,
        one group per (image, channel).
        """
        radius = (self.size // 10) // 2
        if radius == 0:
            return x  # a one-tap kernel: nothing to blur at under 20 px
        lo, hi = self.blur_sigma
        sigma = (lo + (hi - lo) * us).to(x.dtype)
        taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        kernel = torch.exp(-taps[None, :] ** 2 / (2 * sigma[:, None] ** 2))
        kernel = kernel / kernel.sum(1, keepdim=True)  # (B, 2r + 1)
        identity = (taps == 0).to(x.dtype).expand_as(kernel)
        kernel = torch.where((on < self.blur_p)[:, None], kernel, identity)
        b, c, h, w = x.shape
        weight = kernel.repeat_interleave(c, dim=0)  # (B * C, 2r + 1): one group per image channel
        flat = x.reshape(1, b * c, h, w)
        flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), weight[:, None, None, :], groups=b * c)
        flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), weight[:, None, :, None], groups=b * c)
        return flat.view(b, c, h, w)

    def _jitter(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        s = self.jitter_strength
        if s <= 0 or self.jitter_p <= 0:
            return x
        apply = u[:, 4] < self.jitter_p
        factors = 1 + 0.8 * s * (2 * u[:, :3] - 1)  # brightness, contrast, saturation
        factors = torch.where(apply[:, None], factors, torch.ones_like(factors)).to(x.dtype)
        bri, con, sat = (factors[:, i].view(-1, 1, 1, 1) for i in range(3))
        # x is grid_sample's fresh output: work in place
        x = x.mul_(bri).clamp_(0, 1)
        # contrast blends with the mean luma, which is the luma of the per-channel means
        means = x.mean(dim=(2, 3))  # (B, C)
        mean = means @ x.new_tensor(_GRAY) if x.shape[1] == 3 else means[:, 0]
        x = x.mul_(con).add_(mean.view(-1, 1, 1, 1) * (1 - con)).clamp_(0, 1)
        if x.shape[1] != 3:
            return x
        # saturation: blend with the luma image, i.e. sat * I + (1 - sat) * (rows of luma weights)
        eye = torch.eye(3, device=x.device, dtype=x.dtype)
        sat = sat.view(-1, 1, 1)
        x = _mix(sat * eye + (1 - sat) * x.new_tensor(_GRAY).expand(3, 3), x).clamp_(0, 1)
        hue = torch.where(apply, 0.2 * s * (2 * u[:, 3] - 1), torch.zeros_like(u[:, 3]))
        return _rotate_hue(x, hue * 2 * math.pi)


def _rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotates the chroma plane of YIQ by ``angle`` radians per image: (B, 3, H, W) -> same."""
    yiq = x.new_tensor(_RGB_TO_YIQ)
    rgb = x.new_tensor(_YIQ_TO_RGB)
    cos, sin = torch.cos(angle).to(x.dtype), torch.sin(angle).to(x.dtype)
    rot = torch.zeros(x.shape[0], 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2] = cos, -sin
    rot[:, 2, 1], rot[:, 2, 2] = sin, cos
    return _mix(rgb @ rot @ yiq, x).clamp_(0, 1)
