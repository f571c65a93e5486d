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


def blur_(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of float (N, H, W) maps with edge replication, in place; sigma in pixels.

    One map at a time, so the padded temporaries are one map's, not N's (a 4096 px job with 4 masks)."""
    if sigma <= 0:
        return maps
    kernel = _gaussian_kernel(sigma)
    radius = kernel.numel() // 2
    for index in range(maps.shape[0]):
        x = maps[index : index + 1].unsqueeze(1)  # (1, 1, H, W)
        x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
        x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
        maps[index] = x[0, 0]
    return maps  # (N, H, W)


def blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """:func:`blur_` on a float copy: ``maps`` is left as it is."""
    return blur_(maps.float().clone(), sigma)


def soft_weights_(regions: torch.Tensor, feather_px: float) -> torch.Tensor:
    """Per-style float regions (N, H, W) in [0, 1] to soft weights summing to 1 at every pixel, in place.

    ``feather_px`` is the width of the blend at region borders (2 sigma of the Gaussian). Pixels no
    region claims are shared equally. Only one-map temporaries are made beside the (N, H, W) maps.
    """
    count = regions.shape[0]
    soft = blur_(regions, feather_px / 2.0).clamp_(min=0.0)  # (N, H, W)
    total = soft.sum(dim=0, keepdim=True)  # (1, H, W)
    unclaimed = total <= 1e-6
    soft.div_(total.clamp_(min=1e-6))
    return soft.masked_fill_(unclaimed, 1.0 / count)


def soft_weights(regions: torch.Tensor, feather_px: float) -> torch.Tensor:
    """:func:`soft_weights_` on a float copy: ``regions`` is left as it is."""
    return soft_weights_(regions.float().clone(), feather_px)


def peak_bytes(count: int, width: int, height: int, feather_px: float) -> int:
    """Upper bound of the memory a multistyle job's region weights take while they are made: the maps (a label
    map's one-hot int64 and float copies, or the decoded masks and their float maps), one map's padded blur
    temporaries, the total and the unclaimed mask."""
    radius = max(1, math.ceil(3.0 * feather_px / 2.0))
    one_map = (height + 2 * radius) * (width + 2 * radius) * 4
    return count * width * height * (8 + 4) + width * height * (8 + 4 + 1) + 3 * one_map


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
