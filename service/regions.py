"""Multi-style regions: masks or a label map -> soft per-style weights that sum to 1 at every pixel."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from service.imaging import gray_to_tensor


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()  # (2r+1,)


def blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, H, W) maps with edge replication; sigma in pixels."""
    if sigma <= 0:
        return maps
    kernel = _gaussian_kernel(sigma)
    radius = kernel.numel() // 2
    x = maps.unsqueeze(1)  # (N, 1, H, W)
    # Replicate padding needs pad < size on some backends; clamp the radius per axis instead.
    x = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.squeeze(1)  # (N, H, W)


def soft_weights(regions: torch.Tensor, feather_px: float) -> torch.Tensor:
    """Per-style regions (N, H, W) in [0, 1] to soft weights summing to 1 at every pixel.

    ``feather_px`` is the width of the blend at region borders (2 sigma of the Gaussian). Pixels no
    region claims are shared equally.
    """
    count = regions.shape[0]
    soft = blur(regions.float(), feather_px / 2.0).clamp_(min=0.0)
    total = soft.sum(dim=0, keepdim=True)  # (1, H, W)
    uniform = torch.full_like(soft, 1.0 / count)
    return torch.where(total > 1e-6, soft / total.clamp(min=1e-6), uniform)


def masks_to_regions(masks: Sequence[Image.Image], size: tuple[int, int]) -> torch.Tensor:
    """Grayscale masks, resized to ``size`` (W, H), to (N, H, W) in [0, 1]."""
    resized = [m.resize(size, Image.Resampling.BILINEAR) if m.size != size else m for m in masks]
    return torch.stack([gray_to_tensor(m) for m in resized])


def labels_to_regions(labels: torch.Tensor, count: int, size: tuple[int, int]) -> torch.Tensor:
    """Label map (h, w) int64 to one-hot regions (N, H, W) at ``size`` (W, H), nearest neighbour."""
    width, height = size
    one_hot = F.one_hot(labels, count).permute(2, 0, 1).float()  # (N, h, w)
    if one_hot.shape[1:] != (height, width):
        one_hot = F.interpolate(one_hot.unsqueeze(0), size=(height, width), mode="nearest").squeeze(0)
    return one_hot
