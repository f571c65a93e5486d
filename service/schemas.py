"""Request and response models: every field with its range and default, as shown in the OpenAPI docs."""

from __future__ import annotations

import base64
import binascii
import math
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from service.errors import InvalidParameter


class OutputFormat(StrEnum):
    png = "png"
    jpeg = "jpeg"
    webp = "webp"


ALPHA_DOC = "Style strength: 0 = content reconstruction, 1 = full style. Range 0..1, default 1."
PRESERVE_COLOR_DOC = "Keep the content's colours (luminance-only transfer). Default false."
MAX_SIDE_DOC = (
    "Longest side of the output in px (aspect ratio kept, never upscaled). Range 64..STYA2K_MAX_SIDE; "
    "default STYA2K_DEFAULT_SIDE (512)."
)
FORMAT_DOC = "Output encoding: png, jpeg or webp. Default png."
FEATHER_DOC = "Width in output px of the soft blend at region borders. Range 0..64, default 8."
WEIGHTS_DOC = "One non-negative weight per style, not all zero; normalised to sum 1."

Alpha = Annotated[float, Field(ge=0.0, le=1.0, description=ALPHA_DOC, allow_inf_nan=False)]
MaxSide = Annotated[int | None, Field(ge=64, description=MAX_SIDE_DOC)]
Feather = Annotated[float, Field(ge=0.0, le=64.0, description=FEATHER_DOC, allow_inf_nan=False)]
Base64Image = Annotated[
    str, Field(description="Image file bytes, base64 (a data: URL prefix is accepted)", min_length=1)
]


class _JSONRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    content: Base64Image
    alpha: Alpha = 1.0
    preserve_color: bool = Field(False, description=PRESERVE_COLOR_DOC)
    max_side: MaxSide = None
    format: OutputFormat = Field(OutputFormat.png, description=FORMAT_DOC)


class StylizeJSON(_JSONRequest):
    style: Base64Image


class InterpolateJSON(_JSONRequest):
    style: list[Base64Image] = Field(description="2..STYA2K_MAX_STYLES style images")
    weights: list[float] = Field(description=WEIGHTS_DOC)


class MultistyleJSON(_JSONRequest):
    style: list[Base64Image] = Field(description="2..STYA2K_MAX_STYLES style images")
    masks: list[Base64Image] | None = Field(
        None, description="One grayscale mask per style (white = that style's region); or send labels"
    )
    labels: Base64Image | None = Field(None, description="Label map: pixel value i -> style i (0 <= i < N)")
    feather: Feather = 8.0


class Timing(BaseModel):
    queue_ms: float
    compute_ms: float
    total_ms: float


class ImageJSONResponse(BaseModel):
    image: str = Field(description="The output image file, base64")
    format: OutputFormat
    width: int
    height: int
    request_id: str
    timing: Timing


class ErrorBody(BaseModel):
    code: str = Field(description="Machine-readable error code (see docs/API.md)")
    message: str = Field(description="What was wrong and what is allowed")


class ErrorResponse(BaseModel):
    error: ErrorBody


def decode_base64(value: str, field: str) -> bytes:
    """Base64 (optionally a data: URL) to bytes; 422 naming the field when it is not base64."""
    text = value.strip()
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidParameter(field, "not valid base64") from None


def parse_weights_text(text: str) -> list[float]:
    """Multipart ``weights``: comma-separated numbers."""
    parts = [p.strip() for p in text.split(",")]
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise InvalidParameter(
            "weights", f"{text[:80]!r} is not a comma-separated list of numbers (e.g. 0.7,0.3)"
        ) from None


def normalise_weights(weights: list[float], count: int) -> list[float]:
    """Check one finite non-negative weight per style, not all zero; return them summing to 1."""
    if len(weights) != count:
        raise InvalidParameter(
            "weights", f"{len(weights)} weights given for {count} styles; need one per style"
        )
    for weight in weights:
        if not math.isfinite(weight) or weight < 0:
            raise InvalidParameter("weights", f"{weight} is not allowed; weights must be finite and >= 0")
    total = sum(weights)
    if total <= 0:
        raise InvalidParameter("weights", "all weights are zero; at least one must be positive")
    return [w / total for w in weights]
