"""Sizes of images in the service: the smallest side, the output size, batching buckets and padding
(``pad_to`` is the model's own rule, re-exported so the service has one place for sizes)."""

from __future__ import annotations

import math

from model.functional import pad_to

__all__ = ["MIN_SIDE", "bucket_shape", "fit_within", "pad_to"]

MIN_SIDE = 16  # the encoder downsamples by 16; smaller inputs carry no usable content


def fit_within(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Output size: longest side at most ``max_side`` (never upscaled), aspect kept, sides >= MIN_SIDE."""
    scale = min(1.0, max_side / max(width, height))
    return max(MIN_SIDE, round(width * scale)), max(MIN_SIDE, round(height * scale))


def bucket_shape(height: int, width: int, step: int) -> tuple[int, int]:
    """Round a size up to the batching bucket (multiple of ``step``)."""
    return math.ceil(height / step) * step, math.ceil(width / step) * step
