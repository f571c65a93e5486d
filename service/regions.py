"""Multi-style regions: masks or a label map -> soft per-style weights that sum to 1 at every pixel."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from service.imaging import gray_to_tensor

STRIP_PX = 128  # rows / columns a blur convolution takes at once (its memory is a strip's)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()  # (2r+1,)


def blur_(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of float (N, H, W) maps with edge replication, in place; sigma in pixels.

    One map at a time and, within a map, strips of STRIP_PX rows (the horizontal pass: rows are independent) then
    of STRIP_PX columns (the vertical pass): a convolution's padded copy and workspace are then a strip's, not a
    whole map's (the convolution's workspace alone was ~9 floats per pixel of its input)."""
    if sigma <= 0:
        return maps
    kernel = _gaussian_kernel(sigma)
    radius = kernel.numel() // 2
    across, down = kernel.view(1, 1, 1, -1), kernel.view(1, 1, -1, 1)
    height, width = maps.shape[1:]
    for index in range(maps.shape[0]):
        plane = maps[index]  # (H, W)
        for top in range(0, height, STRIP_PX):
            rows = plane[top : top + STRIP_PX][None, None]  # (1, 1, h, W)
            plane[top : top + STRIP_PX] = F.conv2d(F.pad(rows, (radius, radius, 0, 0), mode="replicate"), across)[0, 0]
        for left in range(0, width, STRIP_PX):
            columns = plane[:, left : left + STRIP_PX][None, None]  # (1, 1, H, w)
            plane[:, left : left + STRIP_PX] = F.conv2d(F.pad(columns, (0, 0, radius, radius), mode="replicate"),
                                                        down)[0, 0]  # fmt: skip
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
    """Upper bound of the memory a multistyle job's region weights take while they are made, with their inputs:
    the decoded masks (1 B/px each) or the int64 label map, the float maps (made in place into the weights), one
    map's padded blur temporaries, the total and the unclaimed mask."""
    radius = max(1, math.ceil(3.0 * feather_px / 2.0))
    one_map = (height + 2 * radius) * (width + 2 * radius) * 4
    return count * width * height * (4 + 1) + width * height * (8 + 4 + 1) + 3 * one_map


def masks_to_regions(masks: Sequence[Image.Image], size: tuple[int, int]) -> torch.Tensor:
    """Grayscale masks, resized to ``size`` (W, H), to (N, H, W) in [0, 1], written into one tensor."""
    width, height = size
    regions = torch.empty(len(masks), height, width)
    for index, mask in enumerate(masks):
        resized = mask.resize(size, Image.Resampling.BILINEAR) if mask.size != size else mask
        regions[index] = gray_to_tensor(resized)
    return regions


def labels_to_regions(labels: torch.Tensor, count: int, size: tuple[int, int]) -> torch.Tensor:
    """Label map (h, w) int64 to one-hot regions (N, H, W) at ``size`` (W, H), nearest neighbour; float from the
    start (a scatter), never an int64 one-hot."""
    width, height = size
    one_hot = torch.zeros(count, *labels.shape).scatter_(0, labels.unsqueeze(0), 1.0)  # (N, h, w)
    if one_hot.shape[1:] != (height, width):
        one_hot = F.interpolate(one_hot.unsqueeze(0), size=(height, width), mode="nearest").squeeze(0)
    return one_hot
