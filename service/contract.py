"""The transfer contract: what a client may ask for, and the job the model computes from it.

The lowest floor of the service but the errors: plain Python (torch only for annotations), so the HTTP routes, the
pydantic models, the command line, the decode step and the engine all read one definition of each mode,
field, range and default. The ranges here are the ones the docs state (docs/API.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from service.errors import InvalidParameter

if TYPE_CHECKING:
    import torch

    from model import StyleFeatures


class Mode(StrEnum):
    """The three transfers, named as their endpoints (``/v1/<mode>``)."""

    stylize = "stylize"  # one style
    interpolate = "interpolate"  # convex blend of 2..N styles' transferred features (paper 4.4)
    multistyle = "multistyle"  # each region of the content in its own style

    @property
    def single_style(self) -> bool:
        return self is Mode.stylize


@dataclass(frozen=True)
class Range:
    """An inclusive numeric range, stated once for the validation, the OpenAPI schema, argparse and messages."""

    low: float
    high: float | None = None  # None: bounded by a setting (e.g. STYA2K_MAX_SIDE) or unbounded

    def contains(self, value: float) -> bool:
        return self.low <= value and (self.high is None or value <= self.high)

    def text(self, high: str | None = None) -> str:
        """``0..1``; ``64..STYA2K_MAX_SIDE`` when the upper bound is a setting named by ``high``."""
        top = high if high is not None else _number(self.high) if self.high is not None else "inf"
        return f"{_number(self.low)}..{top}"


def _number(value: float) -> str:
    return f"{value:g}"


ALPHA = Range(0.0, 1.0)  # style strength: 0 = content reconstruction, 1 = full style
FEATHER = Range(0.0, 64.0)  # multistyle: width in output px of the soft blend at region borders
MAX_SIDE = Range(64)  # output's longest side; the top is the server's STYA2K_MAX_SIDE
SMOOTHING = Range(0.0, 0.95)  # video: temporal smoothing strength (0 = off); 1 would freeze the first frame
DEFAULT_ALPHA = 1.0
DEFAULT_FEATHER = 8.0


class OutputFormat(StrEnum):
    # Output encodings (a comment, not a docstring: pydantic would put a docstring into the OpenAPI schema).

    png = "png"
    jpeg = "jpeg"
    webp = "webp"

    @property
    def media_type(self) -> str:
        return f"image/{self.value}"


OUTPUT_FORMATS: dict[str, str] = {fmt.value: fmt.media_type for fmt in OutputFormat}  # name -> media type


class StyleFit(StrEnum):
    # How a style image becomes the model's input at STYA2K_STYLE_SIZE px; a request's style_fit, else the
    # server's STYA2K_STYLE_FIT. (A comment, not a docstring: pydantic would put it into the OpenAPI schema.)

    crop = "crop"  # short side to the size, then a centred square: the texture scale is the same for every style
    whole = "whole"  # long side to the size, aspect kept: nothing is cut off (a panorama keeps its sides)

    @staticmethod
    def text() -> str:
        return " or ".join(StyleFit)


DEFAULT_STYLE_FIT = StyleFit.crop


@dataclass(frozen=True, kw_only=True)
class TransferRequest:
    """One transfer as file bytes plus options, before any decoding (HTTP form, JSON body or command line)."""

    mode: Mode
    content: bytes
    styles: list[bytes]
    alpha: float = DEFAULT_ALPHA
    preserve_color: bool = False
    max_side: int | None = None  # None: the server's default side
    format: OutputFormat = OutputFormat.png
    weights: list[float] | None = None  # interpolate: one per style (normalised by validation)
    masks: list[bytes] | None = None  # multistyle: one grayscale mask per style ...
    labels: bytes | None = None  # ... or one label map (pixel value i -> style i)
    feather: float = DEFAULT_FEATHER
    style_fit: StyleFit | None = None  # None: the server's STYA2K_STYLE_FIT


@dataclass(frozen=True, kw_only=True)
class VideoRequest:
    """One video transfer as file bytes plus options (HTTP form or command line): every frame gets the same
    style (stylize) or the same weighted mix of styles (interpolate)."""

    mode: Mode
    video: bytes
    styles: list[bytes]
    alpha: float = DEFAULT_ALPHA
    preserve_color: bool = False
    max_side: int | None = None  # None: the server's default side (at most STYA2K_VIDEO_MAX_SIDE)
    weights: list[float] | None = None
    style_fit: StyleFit | None = None
    smoothing: float = 0.0  # temporal smoothing strength (model.temporal.TemporalSmoother); 0 = off

    def as_transfer(self) -> TransferRequest:
        """The per-frame transfer it asks for (what the image validation checks): content is each frame."""
        return TransferRequest(
            mode=self.mode, content=b"", styles=self.styles, alpha=self.alpha, preserve_color=self.preserve_color,
            max_side=self.max_side, weights=self.weights, style_fit=self.style_fit,
        )  # fmt: skip


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
    if not math.isfinite(total):
        raise InvalidParameter(
            "weights", f"the weights sum to {total}; use smaller numbers (they are normalised to sum 1)"
        )
    return [w / total for w in weights]


@dataclass(frozen=True)
class StyleInput:
    """One style of a job: either already-encoded features (cache hit) or a prepared image tensor."""

    key: str  # sha256 of the uploaded bytes + style size + fit
    image: torch.Tensor | None  # (3, Hs, Ws) float in [0, 1], when not cached; crop: Hs = Ws = S
    features: StyleFeatures | None  # batch size 1, when cached


@dataclass(frozen=True)
class TransferJob:
    """A decoded, validated request ready for the model."""

    mode: Mode
    content: torch.Tensor  # (3, h, w) float in [0, 1] at output size
    styles: tuple[StyleInput, ...]
    weights: torch.Tensor | None  # None (stylize) | (N,) interpolation | (N, h, w) soft region weights
    alpha: float
    preserve_color: bool

    @property
    def height(self) -> int:
        return int(self.content.shape[1])

    @property
    def width(self) -> int:
        return int(self.content.shape[2])


# (mode, padded height, padded width, number of styles, padded style sizes): the padded (Hs, Ws) of each style
# only when some style is not the S x S square of style_fit=crop, else (): style features of different sizes
# cannot be stacked into one batch, and crop traffic batches exactly as before.
BatchKey = tuple[Mode, int, int, int, tuple[tuple[int, int], ...]]
