"""Decoder of Table 4 (mirrors VGG-19 up to relu4_1; optional relu3_1 skip input), reflection-padded 3x3 convs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvLayer(nn.Module):
    """Reflection pad 1 + 3x3 conv (+ ReLU): keeps the spatial size without zero borders."""

    def __init__(self, cin: int, cout: int, relu: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(F.pad(x, (1, 1, 1, 1), mode="reflect"))
        return F.relu(x) if self.relu else x


def upsample2(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


class Decoder(nn.Module):
    """(B, 512, H/8, W/8) [+ (B, skip, H/4, W/4)] -> (B, 3, H, W); no final activation."""

    def __init__(self, skip_channels: int = 256) -> None:
        super().__init__()
        self.skip_channels = skip_channels
        self.from_relu4 = ConvLayer(512, 256)
        self.stage3 = nn.Sequential(
            ConvLayer(256 + skip_channels, 256), ConvLayer(256, 256), ConvLayer(256, 256), ConvLayer(256, 128)
        )
        self.stage2 = nn.Sequential(ConvLayer(128, 128), ConvLayer(128, 64))
        self.stage1 = nn.Sequential(ConvLayer(64, 64), ConvLayer(64, 3, relu=False))

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        x = upsample2(self.from_relu4(x))  # (B, 256, H/4, W/4)
        if self.skip_channels:
            if skip is None:
                raise ValueError("this decoder expects the relu3_1 skip features")
            x = torch.cat([x, skip], dim=1)  # (B, 256 + skip, H/4, W/4)
        x = upsample2(self.stage3(x))  # (B, 128, H/2, W/2)
        x = upsample2(self.stage2(x))  # (B, 64, H, W)
        return self.stage1(x)  # (B, 3, H, W)
