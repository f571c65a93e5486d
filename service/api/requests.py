"""HTTP requests -> :class:`~service.contract.TransferRequest`: the form fields, strict multipart checks,
JSON bodies (parsed off the event loop) and the X-Deadline-Ms header."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import File, Form, Request, UploadFile

from service.api.state import BODY_STATE_KEY, ServiceState
from service.contract import ALPHA, FEATHER, MAX_SIDE, SMOOTHING, Mode, OutputFormat, StyleFit, TransferRequest
from service.errors import InvalidParameter
from service.presets import library
from service.schemas import (
    ALPHA_DOC,
    FEATHER_DOC,
    FORMAT_DOC,
    MAX_SIDE_DOC,
    PRESERVE_COLOR_DOC,
    STYLE_FIT_DOC,
    STYLE_PRESET_DOC,
    WEIGHTS_DOC,
    InterpolateJSON,
    JSONLimits,
    JSONRequest,
    MultistyleJSON,
    StylizeJSON,
    decode_base64,
    parse_json_body,
)
from service.settings import Settings

# The multipart form's fields, with the same ranges and docs as the JSON models (service.contract).
ContentFile = Annotated[UploadFile, File(description="Content photo (PNG, JPEG, WebP, BMP, TIFF, GIF)")]
StyleFile = Annotated[UploadFile | None, File(description="Style image; or name a preset in style_preset")]
StyleFiles = Annotated[
    list[UploadFile] | None,
    File(description="Style images, 2..STYA2K_MAX_STYLES in all with style_preset (repeat the field)"),
]
StylePresetForm = Annotated[list[str] | None, Form(description=STYLE_PRESET_DOC)]
MaskFiles = Annotated[list[UploadFile] | None, File(description="One grayscale mask per style (white = region)")]
LabelsFile = Annotated[UploadFile | None, File(description="Label map: pixel value i -> style i")]
AlphaForm = Annotated[float, Form(ge=ALPHA.low, le=ALPHA.high, allow_inf_nan=False, description=ALPHA_DOC)]
PreserveForm = Annotated[bool, Form(description=PRESERVE_COLOR_DOC)]
MaxSideForm = Annotated[int | None, Form(ge=MAX_SIDE.low, description=MAX_SIDE_DOC)]
FormatForm = Annotated[OutputFormat, Form(description=FORMAT_DOC)]
WeightsForm = Annotated[str, Form(description=WEIGHTS_DOC + " Comma-separated, e.g. 0.7,0.3")]
FeatherForm = Annotated[
    float, Form(ge=FEATHER.low, le=FEATHER.high, allow_inf_nan=False, description=FEATHER_DOC)
]
StyleFitForm = Annotated[StyleFit | None, Form(description=STYLE_FIT_DOC)]


def deadline(request: Request, settings: Settings) -> float:
    """Absolute monotonic deadline: arrival + the server's deadline, shortened by X-Deadline-Ms if given."""
    budget_ms = float(settings.deadline_ms)
    header = request.headers.get("x-deadline-ms")
    if header is not None:
        try:
            asked = float(header)
        except ValueError:
            asked = float("nan")
        if not asked > 0 or asked == float("inf"):
            raise InvalidParameter(
                "X-Deadline-Ms", f"{header[:40]!r} must be a positive number of milliseconds"
            )
        budget_ms = min(budget_ms, asked)
    return float(request.state.started) + budget_ms / 1000.0


# What each text field allows, for the messages of the strict form checks below.
FORM_ALLOWED = {
    "alpha": f"a number {ALPHA.text()}",
    "preserve_color": "true or false",
    "max_side": f"an integer {MAX_SIDE.text('STYA2K_MAX_SIDE')}",
    "format": ", ".join(list(OutputFormat)[:-1]) + f" or {list(OutputFormat)[-1]}",
    "feather": f"a number {FEATHER.text()}",
    "weights": "comma-separated numbers, one per style",
    "style_fit": StyleFit.text(),
    "smoothing": f"a number {SMOOTHING.text()}",
}
_INTEGER = re.compile(r"\s*\d+\s*")
NO_STYLE = "required: a style image (style) or a preset's name (style_preset; GET /v1/styles lists them)"


async def check_form(request: Request, repeatable: frozenset[str] = frozenset()) -> None:
    """Strict multipart: each field once (unless it is a list), no empty values, integers written as integers.

    FastAPI keeps the last of duplicated parts and treats an empty value as absent; a client that sends
    either has a bug it should hear about. The form is the one FastAPI already parsed (cached).
    """
    counts: dict[str, int] = {}
    for name, value in (await request.form()).multi_items():
        counts[name] = counts.get(name, 0) + 1
        if counts[name] == 2 and name not in repeatable:
            raise InvalidParameter(name, "sent more than once; send this field once")
        if isinstance(value, str):
            allowed = FORM_ALLOWED.get(name, "a value")
            if not value.strip():
                raise InvalidParameter(name, f"empty value; send {allowed}, or leave the field out for the default")
            if name == "max_side" and not _INTEGER.fullmatch(value):
                raise InvalidParameter(name, f"{value[:40]!r} is not an integer; allowed: {allowed}")


async def form_styles(request: Request) -> list[bytes]:
    """The style images of a multipart form in the order sent: each ``style`` file's bytes and each
    ``style_preset``'s painting, interleaved as the parts came (weights and masks follow this order)."""
    presets = library()
    styles: list[bytes] = []
    for name, value in (await request.form()).multi_items():
        if name == "style":
            if isinstance(value, str):
                raise InvalidParameter("style", "must be a file part (an image); name a preset in style_preset")
            styles.append(await value.read())
        elif name == "style_preset":
            if not isinstance(value, str):
                raise InvalidParameter("style_preset", "a preset's name, not a file (GET /v1/styles lists them)")
            styles.append(presets.image(value))
    if not styles:
        raise InvalidParameter("style", NO_STYLE)
    return styles


async def json_transfer(request: Request, state: ServiceState, model: type[JSONRequest]) -> TransferRequest:
    """Read the body on the loop (cheap), check, parse, validate and base64-decode it in a worker thread."""
    body = request.scope["state"].get(BODY_STATE_KEY)  # buffered by the gateway: no second 20 MB join
    if not isinstance(body, bytes):
        body = await request.body()
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(state.io_pool, parse_json_transfer, body, model, state.settings)


def parse_json_transfer(body: bytes, model: type[JSONRequest], settings: Settings) -> TransferRequest:
    parsed, raw = parse_json_body(body, model, JSONLimits(settings.max_json_items, settings.max_json_depth))

    def decode(value: str, field: str) -> bytes:
        return decode_base64(raw.get(value, value), field)

    common: dict[str, Any] = {
        "content": decode(parsed.content, "content"),
        "alpha": parsed.alpha,
        "preserve_color": parsed.preserve_color,
        "max_side": parsed.max_side,
        "format": parsed.format,
        "style_fit": parsed.style_fit,
    }
    if isinstance(parsed, StylizeJSON):
        return TransferRequest(mode=Mode.stylize, styles=json_styles(parsed, decode), **common)
    assert isinstance(parsed, InterpolateJSON | MultistyleJSON)
    styles = json_styles(parsed, decode)
    if isinstance(parsed, InterpolateJSON):
        return TransferRequest(mode=Mode.interpolate, styles=styles, weights=list(parsed.weights), **common)
    return TransferRequest(
        mode=Mode.multistyle,
        styles=styles,
        masks=[decode(m, f"masks[{i}]") for i, m in enumerate(parsed.masks)] if parsed.masks else None,
        labels=decode(parsed.labels, "labels") if parsed.labels is not None else None,
        feather=parsed.feather,
        **common,
    )


def json_styles(parsed: JSONRequest, decode: Callable[[str, str], bytes]) -> list[bytes]:
    """A JSON body's style images: the ``style`` entries, then the ``style_preset`` ones (two lists cannot
    interleave; a multipart form keeps the order its parts were sent in)."""
    given, presets = getattr(parsed, "style", None), getattr(parsed, "style_preset", None)
    if isinstance(given, str):
        styles = [decode(given, "style")]
    else:
        styles = [decode(s, f"style[{i}]") for i, s in enumerate(given or [])]
    names = [presets] if isinstance(presets, str) else list(presets or [])
    styles += [library().image(name, "style_preset") for name in names]
    if not styles:
        raise InvalidParameter("style", NO_STYLE)
    return styles
