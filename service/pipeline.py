"""Request -> model job -> response bytes: validation of counts, decoding, and output encoding.

Transport-neutral: the multipart and JSON endpoints both build a :class:`TransferRequest`. The decode
and encode steps are blocking (PIL) and run in a thread pool, never on the event loop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from service import imaging
from service.engine import StyleInput, TransferJob
from service.errors import InvalidParameter
from service.schemas import normalise_weights
from service.settings import Settings


@dataclass
class TransferRequest:
    mode: str  # stylize | interpolate | multistyle
    content: bytes
    styles: list[bytes]
    alpha: float = 1.0
    preserve_color: bool = False
    max_side: int | None = None
    format: str = "png"
    weights: list[float] | None = None
    masks: list[bytes] | None = None
    labels: bytes | None = None
    feather: float = 8.0


def validate(request: TransferRequest, settings: Settings) -> None:
    """Cheap checks that need no decoding: counts, weights, max_side against the settings."""
    count = len(request.styles)
    if request.mode == "stylize":
        if count != 1:
            raise InvalidParameter("style", f"{count} style files given; /v1/stylize takes exactly one")
    elif not 2 <= count <= settings.max_styles:
        raise InvalidParameter(
            "style", f"{count} style files given; {request.mode} takes 2..{settings.max_styles}"
        )
    if request.max_side is not None and not 64 <= request.max_side <= settings.max_side:
        raise InvalidParameter(
            "max_side", f"{request.max_side} is out of range; allowed 64..{settings.max_side}"
        )
    if request.mode == "interpolate":
        if request.weights is None:
            raise InvalidParameter("weights", "required: one non-negative number per style")
        request.weights = normalise_weights(request.weights, count)
    if request.mode == "multistyle":
        has_masks = bool(request.masks)
        if has_masks == (request.labels is not None):
            raise InvalidParameter("mask", "send either one mask per style or one labels image (not both)")
        if has_masks and len(request.masks or []) != count:
            raise InvalidParameter(
                "mask", f"{len(request.masks or [])} masks given for {count} styles; need one per style"
            )


def style_key(data: bytes, style_size: int) -> str:
    return f"{hashlib.sha256(data).hexdigest()}:{style_size}"


def prepare(
    request: TransferRequest,
    settings: Settings,
    lookup_style: Callable[[str], Any | None],
    budget: imaging.DecodeBudget | None = None,
) -> TransferJob:
    """Decode and shape every input (blocking; run in a worker thread) within the decode memory budget."""
    limits = imaging.ImageLimits(settings.max_input_pixels, budget)
    side = request.max_side or settings.default_side
    content_img = imaging.decode_image(request.content, "content", limits, fit=side)
    size = imaging.fit_within(*content_img.size, side)  # (W, H)
    content = imaging.to_tensor(imaging.resize(content_img, size))  # (3, H, W)
    styles = tuple(
        _prepare_style(
            data, f"style[{i}]" if len(request.styles) > 1 else "style", settings, limits, lookup_style
        )
        for i, data in enumerate(request.styles)
    )
    weights: torch.Tensor | None = None
    if request.mode == "interpolate":
        assert request.weights is not None
        weights = torch.tensor(request.weights, dtype=torch.float32)  # (N,)
    elif request.mode == "multistyle":
        weights = _region_weights(request, size, limits)  # (N, H, W)
    return TransferJob(
        mode=request.mode,
        content=content,
        styles=styles,
        weights=weights,
        alpha=request.alpha,
        preserve_color=request.preserve_color,
    )


def _prepare_style(
    data: bytes,
    field: str,
    settings: Settings,
    limits: imaging.ImageLimits,
    lookup_style: Callable[[str], Any | None],
) -> StyleInput:
    key = style_key(data, settings.style_size)
    cached = lookup_style(key)
    if cached is not None:
        return StyleInput(key=key, image=None, features=cached)  # skip decoding altogether
    image = imaging.decode_image(data, field, limits, cover=settings.style_size)
    tensor = imaging.to_tensor(imaging.square_crop(image, settings.style_size))  # (3, S, S)
    return StyleInput(key=key, image=tensor, features=None)


def _region_weights(
    request: TransferRequest, size: tuple[int, int], limits: imaging.ImageLimits
) -> torch.Tensor:
    count = len(request.styles)
    if request.masks:
        masks = [imaging.decode_mask(data, f"mask[{i}]", limits, size) for i, data in enumerate(request.masks)]
        regions = imaging.masks_to_regions(masks, size)  # (N, H, W)
    else:
        assert request.labels is not None
        labels = imaging.decode_labels(request.labels, "labels", limits, count, size)
        regions = imaging.labels_to_regions(labels, count, size)  # (N, H, W)
    return imaging.soft_weights(regions, request.feather)


def encode(image: torch.Tensor, fmt: str) -> bytes:
    """uint8 (3, H, W) -> image file bytes (blocking; run in a worker thread)."""
    return imaging.encode_image(imaging.from_uint8(image), fmt)
