"""PIL <-> tensor conversion shared by the model tools and the service (no numpy needed)."""

from __future__ import annotations

import ctypes

import torch
from PIL import Image
from torch import Tensor

# The file names that count as images wherever a folder is listed (training and calibration data, the CLI's
# batch folders). A GIF decodes to its first frame, a normal RGB image, so it is one too.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


def pil_to_tensor(img: Image.Image) -> Tensor:
    """PIL image (converted to RGB if needed) -> (3, H, W) float32 in [0, 1]."""
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    width, height = rgb.size
    pixels = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)  # (H*W*3,)
    return pixels.view(height, width, 3).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)


def quantize(image: Tensor) -> Tensor:
    """Float (..., 3, H, W) in [0, 1] -> uint8 with rounding (values outside [0, 1] are clamped)."""
    return image.clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)


def uint8_to_pil(image: Tensor) -> Image.Image:
    """uint8 (3, H, W) tensor -> RGB PIL image."""
    _, height, width = image.shape
    hwc = image.detach().cpu().permute(1, 2, 0).contiguous()  # (H, W, 3), compact; alive during the copy
    # One memcpy of exactly these H*W*3 bytes: iterating the storage in Python holds the GIL ~1000x longer
    # (1.7 s for a 512x512 image, measured by bench/service.py).
    return Image.frombytes("RGB", (width, height), ctypes.string_at(hwc.data_ptr(), hwc.numel()))


def tensor_to_pil(image: Tensor) -> Image.Image:
    """Float (3, H, W) in [0, 1] (clamped) -> RGB PIL image."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) tensor, got shape {tuple(image.shape)}")
    return uint8_to_pil(quantize(image.detach().float()))
