"""Encoder g (ResNet18 without its last linear layer) and the projection heads h_phi, h_psi."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, conv1x1

if TYPE_CHECKING:
    from con2lib.config import Config


class ResNet18Encoder(nn.Module):
    """torchvision's ResNet18 without ``fc``, with a choice of stem and a channel-width multiplier.

    With ``width=1`` and ``stem="imagenet"`` the parameters have exactly the names and shapes of
    ``torchvision.models.resnet18()`` (minus ``fc``), so its weights load with ``strict=False``.

    Args:
        in_channels: 1 for grayscale, 3 for colour images.
        width: multiplier of the 64-128-256-512 channels (e.g. 0.25 for CPU-sized runs).
        stem: ``cifar`` (3x3 stride-1 conv, no max-pool: inputs up to 64 px), ``stride2`` (3x3
            stride-2 conv, no max-pool: 4x cheaper), ``imagenet`` (7x7 stride-2 conv + max-pool).
    """

    def __init__(self, in_channels: int = 3, width: float = 1.0, stem: str = "cifar") -> None:
        super().__init__()
        planes = [max(8, round(64 * width * 2**i)) for i in range(4)]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, planes[0], 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        elif stem in ("cifar", "stride2"):
            self.conv1 = nn.Conv2d(in_channels, planes[0], 3, stride=1 if stem == "cifar" else 2, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            raise ValueError(f"unknown stem {stem!r}; expected cifar, stride2 or imagenet")
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.relu = nn.ReLU(inplace=True)
        self.inplanes = planes[0]
        self.layer1 = self._make_layer(planes[0], stride=1)
        self.layer2 = self._make_layer(planes[1], stride=2)
        self.layer3 = self._make_layer(planes[2], stride=2)
        self.layer4 = self._make_layer(planes[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = planes[3]
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes))
        first = BasicBlock(self.inplanes, planes, stride, downsample)
        self.inplanes = planes
        return nn.Sequential(first, BasicBlock(planes, planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised images -> (B, out_dim) features."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


class ProjectionHead(nn.Module):
    """SimCLR's MLP with one hidden layer: Linear -> BatchNorm -> ReLU -> Linear."""

    def __init__(self, in_dim: int, out_dim: int = 128, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = hidden_dim or in_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, out_dim)."""
        return self.net(h)


class Con2Model(nn.Module):
    """Encoder g with two independent heads: h_phi (context contrasting) and h_psi (content alignment)."""

    def __init__(self, in_channels: int, width: float = 1.0, stem: str = "cifar", proj_dim: int = 128) -> None:
        super().__init__()
        self.encoder = ResNet18Encoder(in_channels, width, stem)
        self.context_head = ProjectionHead(self.encoder.out_dim, proj_dim)
        self.content_head = ProjectionHead(self.encoder.out_dim, proj_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> (features (B, F), context projections (B, P), content projections (B, P))."""
        h = self.encoder(x)
        return h, self.context_head(h), self.content_head(h)


def resolve_stem(stem: str, image_size: int) -> str:
    """``auto``: the CIFAR stem for inputs up to 64 px, torchvision's ImageNet stem above."""
    if stem != "auto":
        return stem
    return "cifar" if image_size <= 64 else "imagenet"


def build_model(cfg: Config, in_channels: int) -> Con2Model:
    """The encoder and both heads as the config describes them."""
    return Con2Model(in_channels, cfg.width, resolve_stem(cfg.stem, cfg.image_size), cfg.proj_dim)
