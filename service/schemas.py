"""Request and response models: every field with its range and default, as shown in the OpenAPI docs."""

from __future__ import annotations

import binascii
import os
import re
from dataclasses import dataclass
from typing import Annotated, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.contract import ALPHA, DEFAULT_ALPHA, DEFAULT_FEATHER, FEATHER, MAX_SIDE, OutputFormat, StyleFit
from service.errors import BadRequest, BodyTooLarge, InvalidParameter, ServiceError, validation_error

M = TypeVar("M", bound=BaseModel)


ALPHA_DOC = (
    f"Style strength: 0 = content reconstruction, 1 = full style. Range {ALPHA.text()}, default {DEFAULT_ALPHA:g}."
)
PRESERVE_COLOR_DOC = "Keep the content's colours (luminance-only transfer). Default false."
MAX_SIDE_DOC = (
    f"Longest side of the output in px (aspect ratio kept, never upscaled). Range {MAX_SIDE.text('STYA2K_MAX_SIDE')}; "
    "default STYA2K_DEFAULT_SIDE (512)."
)
FORMAT_DOC = f"Output encoding: {', '.join(list(OutputFormat)[:-1])} or {list(OutputFormat)[-1]}. Default png."
FEATHER_DOC = (
    f"Width in output px of the soft blend at region borders. Range {FEATHER.text()}, default {DEFAULT_FEATHER:g}."
)
WEIGHTS_DOC = "One non-negative weight per style, not all zero; normalised to sum 1."
STYLE_FIT_DOC = (
    f"How each style image is prepared ({StyleFit.text()}): crop = short side to STYA2K_STYLE_SIZE, then a "
    "centred square (the sides of a wide image are cut off); whole = the whole image, long side to "
    "STYA2K_STYLE_SIZE, aspect kept (refused when its short side would fall below 16 px). Default: the "
    "server's STYA2K_STYLE_FIT (crop unless configured; GET /v1/info limits.style_fit)."
)
STYLE_PRESET_DOC = (
    "A preset style's name instead of (or besides) an uploaded style image: GET /v1/styles lists them. Repeat the "
    "field for several; the styles are taken in the order the parts are sent (JSON: style first, then "
    "style_preset), and weights and masks follow that order."
)

Alpha = Annotated[float, Field(ge=ALPHA.low, le=ALPHA.high, description=ALPHA_DOC, allow_inf_nan=False)]
MaxSide = Annotated[int | None, Field(ge=MAX_SIDE.low, description=MAX_SIDE_DOC)]
Feather = Annotated[float, Field(ge=FEATHER.low, le=FEATHER.high, description=FEATHER_DOC, allow_inf_nan=False)]
Base64Image = Annotated[
    str, Field(description="Image file bytes, base64 (a data: URL prefix is accepted)", min_length=1)
]


class JSONRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    content: Base64Image
    alpha: Alpha = DEFAULT_ALPHA
    preserve_color: bool = Field(False, description=PRESERVE_COLOR_DOC)
    max_side: MaxSide = None
    format: OutputFormat = Field(OutputFormat.png, description=FORMAT_DOC)
    style_fit: StyleFit | None = Field(None, description=STYLE_FIT_DOC)


class StylizeJSON(JSONRequest):
    style: Base64Image | None = Field(None, description="The style image; or name a preset in style_preset")
    style_preset: str | None = Field(None, description=STYLE_PRESET_DOC)


class InterpolateJSON(JSONRequest):
    style: list[Base64Image] = Field([], description="2..STYA2K_MAX_STYLES style images, with style_preset")
    style_preset: list[str] = Field([], description=STYLE_PRESET_DOC)
    weights: list[float] = Field(description=WEIGHTS_DOC)


class MultistyleJSON(JSONRequest):
    style: list[Base64Image] = Field([], description="2..STYA2K_MAX_STYLES style images, with style_preset")
    style_preset: list[str] = Field([], description=STYLE_PRESET_DOC)
    masks: list[Base64Image] | None = Field(
        None, description="One grayscale mask per style (white = that style's region); or send labels"
    )
    labels: Base64Image | None = Field(None, description="Label map: pixel value i -> style i (0 <= i < N)")
    feather: Feather = DEFAULT_FEATHER


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


# Base64 is decoded in slices of this many characters (a multiple of 4): each slice is one short call that
# holds the GIL, so the event loop thread gets it back between slices (a 20 MB string in one call: ~150 ms).
B64_SLICE = 256 * 1024


def decode_base64(value: str | bytes | memoryview, field: str) -> bytes:
    """Base64 (optionally a ``data:...;base64,`` URL) to bytes; 422 naming the field when it is not base64.

    ``value``: the JSON string, or for long ones the raw bytes of its content (see :func:`parse_json_body`).
    """
    text: str | bytes | memoryview = value.strip() if isinstance(value, str) else value
    if isinstance(text, memoryview) and (bytes(text[:1]).isspace() or bytes(text[-1:]).isspace()):
        text = bytes(text).strip()  # rare: copied only when there is whitespace to strip
    if bytes(text[:5]) == b"data:" if not isinstance(text, str) else text.startswith("data:"):
        head = text[:512] if isinstance(text, str) else bytes(text[:512]).decode("ascii", "replace")
        comma = head.find(",")
        if comma < 0:
            raise InvalidParameter(field, "a data: URL needs a comma before its data (data:image/png;base64,...)")
        if not head[:comma].endswith(";base64"):
            raise InvalidParameter(
                field, f"{head[:min(comma, 60)]!r}: only base64 data: URLs are accepted (data:...;base64,)"
            )
        text = text[comma + 1 :]
    if len(text) % 4:
        raise InvalidParameter(field, f"not valid base64: {len(text)} characters is not a multiple of 4")
    try:
        chunks = [
            binascii.a2b_base64(text[start : start + B64_SLICE], strict_mode=True)
            for start in range(0, len(text), B64_SLICE)
        ]
    except (binascii.Error, ValueError):
        raise InvalidParameter(field, "not valid base64 (allowed: A-Z a-z 0-9 + / and = padding at the end)") from None
    return b"".join(chunks)


def parse_weights_text(text: str, max_count: int) -> list[float]:
    """Multipart ``weights``: comma-separated numbers, at most ``max_count`` of them."""
    count = text.count(",") + 1  # counted before splitting: a huge list is refused without building it
    if count > max_count:
        raise InvalidParameter("weights", f"{count} weights given; at most {max_count} (one per style)")
    parts = [p.strip() for p in text.split(",")]
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise InvalidParameter(
            "weights", f"{text[:80]!r} is not a comma-separated list of numbers (e.g. 0.7,0.3)"
        ) from None


# ---------------------------------------------------------------------------------------------- JSON bodies
_WHITESPACE = b" \t\r\n"
STRUCTURE_BYTES_PER_ITEM = 32  # bytes outside strings per allowed value: room for long numbers, commas, colons
_SCAN_SLICE = 1 << 20  # whitespace is stripped in slices: short GIL holds (see B64_SLICE)


@dataclass(frozen=True)
class JSONLimits:
    max_items: int  # values + object keys in all
    max_depth: int  # nesting of arrays / objects


def check_json_structure(body: bytes, limits: JSONLimits, big: int | None = None) -> list[tuple[int, int, bool]]:
    """Refuse a JSON body whose structure is too big, before any parser builds it (413).

    Strings are skipped with ``bytes.find`` (memchr speed, no copy); what lies between them (numbers,
    literals, punctuation) is collected without whitespace and must stay small, so a million keys or a list of
    three million nulls is refused after scanning, not after building millions of objects and error entries.
    Not a JSON validator: syntax errors are left to the parser. Returns the (start, end, escaped) spans of the
    contents of strings of at least ``big`` bytes.
    """
    spans: list[tuple[int, int, bool]] = []
    outside = bytearray()
    outside_limit = limits.max_items * STRUCTURE_BYTES_PER_ITEM
    strings = 0
    position, size = 0, len(body)
    while position < size:
        quote = body.find(b'"', position)
        stop = size if quote < 0 else quote
        for start in range(position, stop, _SCAN_SLICE):
            outside += body[start : min(stop, start + _SCAN_SLICE)].translate(None, _WHITESPACE)
            if len(outside) > outside_limit:
                raise _too_many(limits)
        if quote < 0:
            break
        position, escaped = _string_end(body, quote + 1)
        if big is not None and position - quote - 2 >= big:
            spans.append((quote + 1, position - 1, escaped))
        strings += 1
        outside += b'"'  # one placeholder byte per string keeps the order of values for the depth scan
        if strings > limits.max_items:
            raise _too_many(limits)
    items = strings + outside.count(b",") + outside.count(b"[") + outside.count(b"{")
    for literal in (b"true", b"false", b"null"):
        items += outside.count(literal)
    if items > limits.max_items:
        raise _too_many(limits)
    _check_depth(bytes(outside), limits.max_depth)
    return spans


def _string_end(body: bytes, position: int) -> tuple[int, bool]:
    """Index just past the string whose content starts at ``position`` (or the end of an unterminated one),
    and whether it holds an escape."""
    escaped = False
    quote = body.find(b'"', position)
    while quote >= 0:
        backslash = body.find(b"\\", position, quote)
        if backslash < 0:
            return quote + 1, escaped
        escaped = True
        position = backslash + 2  # an escape: skip the escaped character (which may be this quote)
        if position > quote:  # searched again only when passed: linear even with many escapes
            quote = body.find(b'"', position)
    return len(body), escaped


def _check_depth(outside: bytes, max_depth: int) -> None:
    if outside.count(b"[") + outside.count(b"{") <= max_depth:
        return  # cannot nest deeper than there are containers
    depth = 0
    for byte in outside:
        if byte in b"[{":
            depth += 1
            if depth > max_depth:
                raise BodyTooLarge(f"JSON body nests arrays / objects deeper than {max_depth} levels")
        elif byte in b"]}":
            depth -= 1


def _too_many(limits: JSONLimits) -> ServiceError:
    return BodyTooLarge(
        f"JSON body has more than {limits.max_items} values and keys (STYA2K_MAX_JSON_ITEMS); a transfer request "
        "needs a few dozen"
    )


BIG_STRING = 64 * 1024  # JSON strings this long (images) are cut out before validation and decoded in place
_NOT_SPACE = re.compile(rb"[^ \t\r\n]")


def parse_json_body(body: bytes, model: type[M], limits: JSONLimits) -> tuple[M, dict[str, bytes | memoryview]]:
    """Check the structure, then parse and validate strictly (blocking: run it in a worker thread).

    Strict: ``true`` is not a number, ``"0.5"`` is not a float, ``64.0`` is not an integer. Long strings (the
    base64 images) are replaced by short placeholders before pydantic sees the body: validating a 19 MB
    string holds the GIL for 30-70 ms in one call, long enough to delay health probes. Returns the model and
    placeholder -> the raw JSON string content (a view into the body, no copy), for :func:`decode_base64`.
    """
    if _NOT_SPACE.search(body) is None:
        raise BadRequest("request body is empty; send a JSON object (see GET /docs)")
    spans = check_json_structure(body, limits, big=BIG_STRING)
    view = memoryview(body)
    raw: dict[str, bytes | memoryview] = {}
    pieces: list[bytes | memoryview] = []
    token = os.urandom(4).hex()
    previous = 0
    for start, end, escaped in spans:
        placeholder = f"<{end - start}-byte string {token}-{len(raw)}>"
        content = view[start:end]
        # JSON may escape "/" as "\/" (PHP does): the only escape base64 can need.
        raw[placeholder] = bytes(content).replace(b"\\/", b"/") if escaped else content
        pieces += [view[previous:start], placeholder.encode()]
        previous = end
    skeleton = b"".join([*pieces, view[previous:]]) if spans else body
    try:
        return model.model_validate_json(skeleton, strict=True), raw
    except ValidationError as exc:
        raise validation_error(exc.errors(include_url=False)) from None
