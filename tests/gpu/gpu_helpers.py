"""Helpers of more than one CUDA test module (tests/gpu): strict fp32, photo-like jobs and image differences."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from bench.service import synthetic_image
from service import pipeline
from service.contract import Mode, TransferJob, TransferRequest
from service.engine import Engine

# Reduced precision vs strict fp32, on [0, 1] pixels. Loose enough for honest fp16/bf16 rounding, tight enough
# that an overflow, a NaN (quantised to black) or a wrong layout (visibly different image) fails.
PRECISION_MEAN_MAX = 4 / 255
PRECISION_P99_MAX = 24 / 255
# Same precision, different device or batch composition: only rounding flips of the last level may differ.
SAME_P99_MAX = 1 / 255
SAME_MAX_MAX = 4 / 255


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """fp32 convolutions and matmuls without TF32 (CUDA's default lets cuDNN use TF32)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def make_job(engine: Engine, width: int, height: int, seed: int, side: int) -> TransferJob:
    """A decoded request: a photo-like PNG content of width x height and one style (encoded in the batch)."""
    request = TransferRequest(mode=Mode.stylize, content=synthetic_image(width, height, seed, "PNG"),
                              styles=[synthetic_image(384, 384, 1000, "PNG")], max_side=side)
    return pipeline.prepare(request, engine.settings, lambda key: None)


def diff_stats(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Mean / p99 / max absolute difference of two uint8 (3, h, w) images, on the [0, 1] scale."""
    assert a.shape == b.shape, (a.shape, b.shape)
    d = (a.float() - b.float()).abs().flatten() / 255  # (3*h*w,)
    return {"mean_abs": d.mean().item(), "p99_abs": torch.quantile(d, 0.99).item(), "max_abs": d.max().item()}
