"""Output sizes, batching buckets and padding."""

from __future__ import annotations

import torch

from service import geometry


def test_fit_within_keeps_aspect_and_never_upscales() -> None:
    assert geometry.fit_within(1000, 500, 512) == (512, 256)
    assert geometry.fit_within(300, 600, 512) == (256, 512)
    assert geometry.fit_within(100, 80, 512) == (100, 80)
    assert geometry.fit_within(4000, 20, 512) == (512, 16)  # sides never below the minimum


def test_pad_to_and_buckets() -> None:
    image = torch.rand(1, 3, 30, 50)
    padded = geometry.pad_to(image, 64, 64)
    assert padded.shape == (1, 3, 64, 64)
    assert torch.equal(padded[..., :30, :50], image)
    assert geometry.bucket_shape(30, 50, 64) == (64, 64)
    assert geometry.bucket_shape(64, 65, 64) == (64, 128)
