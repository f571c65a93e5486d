"""Sizes of images in the service: the smallest side, the output size, batching buckets and padding."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MIN_SIDE = 16  # the encoder downsamples by 16; smaller inputs carry no usable content


def fit_within(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Output size: longest side at most ``max_side`` (never upscaled), aspect kept, sides >= MIN_SIDE."""
    scale = min(1.0, max_side / max(width, height))
    return max(MIN_SIDE, round(width * scale)), max(MIN_SIDE, round(height * scale))


def pad_to(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad (B, C, h, w) at the bottom/right to (B, C, height, width); reflect when possible."""
    _, _, h, w = image.shape
    pad_bottom, pad_right = height - h, width - w
    if pad_bottom == 0 and pad_right == 0:
        return image
    mode = "reflect" if pad_bottom < h and pad_right < w else "replicate"
    return F.pad(image, (0, pad_right, 0, pad_bottom), mode=mode)


def bucket_shape(height: int, width: int, step: int) -> tuple[int, int]:
    """Round a size up to the batching bucket (multiple of ``step``)."""
    return math.ceil(height / step) * step, math.ceil(width / step) * step
