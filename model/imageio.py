"""Minimal PIL <-> tensor conversion shared by the model tools and the service (no numpy needed)."""

from __future__ import annotations

import ctypes

import torch
from PIL import Image
from torch import Tensor

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


def pil_to_tensor(img: Image.Image) -> Tensor:
    """RGB PIL image -> (3, H, W) float32 in [0, 1]."""
    img = img.convert("RGB")
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return data.view(img.height, img.width, 3).permute(2, 0, 1).float().div_(255.0)


def tensor_to_bytes_hwc(x: Tensor) -> tuple[bytes, int, int]:
    """(3, H, W) float in [0, 1] -> (RGB bytes in HWC order, width, height); values clamped and rounded."""
    u8 = x.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).contiguous().cpu()
    # ctypes reads the contiguous buffer directly: ~1000x faster than going through Python ints, no numpy needed.
    return ctypes.string_at(u8.data_ptr(), u8.numel()), u8.shape[1], u8.shape[0]


def tensor_to_pil(x: Tensor) -> Image.Image:
    """(3, H, W) float in [0, 1] -> RGB PIL image."""
    data, width, height = tensor_to_bytes_hwc(x)
    return Image.frombytes("RGB", (width, height), data)
