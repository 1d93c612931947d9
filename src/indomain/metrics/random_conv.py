"""A fixed random conv net as a feature space: lets the FID/KID path run without the Inception weights file."""

from __future__ import annotations

import torch
from torch import nn


class RandomConvFeatures(nn.Module):
    """A fixed random conv net (weights drawn from ``seed``): a feature space for smoke tests and CI ONLY.

    It lets the whole FID/KID path run without the Inception weights file. Its "FID" measures nothing
    perceptual and is not comparable with any published FID; results record it as ``random-conv:<seed>``.
    """

    input_resolution = 64
    resize_mode = "none"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.display_name = f"random-conv:{seed} (smoke tests only, not Inception FID)"
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
