"""The transfer endpoints: ``/v1/{stylize,interpolate,multistyle}`` (multipart) and their ``/json`` twins.

Each route only turns its request into a :class:`~service.contract.TransferRequest` and answers the outcome;
the work is :func:`service.pipeline.run_transfer`, with a :class:`BatcherRunner` that decodes in the server's
thread pool and queues the job on the batcher (dropped if the client disconnects while it waits).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.api.requests import (
    AlphaForm,
    ContentFile,
    FeatherForm,
    FormatForm,
    LabelsFile,
    MaskFiles,
    MaxSideForm,
    PreserveForm,
    StyleFile,
    StyleFiles,
    StyleFitForm,
    StylePresetForm,
    WeightsForm,
    check_form,
    form_styles,
    json_transfer,
)
from service.api.responses import IMAGE_RESPONSE, JSON_RESPONSE, image_response, json_response
from service.api.runner import BatcherRunner
from service.api.state import ServiceState, State
from service.contract import DEFAULT_ALPHA, DEFAULT_FEATHER, Mode, OutputFormat, TransferRequest
from service.errors import NotReady
from service.pipeline import TransferOutcome, run_transfer
from service.schemas import InterpolateJSON, JSONRequest, MultistyleJSON, StylizeJSON, parse_weights_text

T = TypeVar("T")
R = TypeVar("R", bound=Response)
router = APIRouter()


async def _answer(
    request: Request,
    state: ServiceState,
    transfer: TransferRequest,
    answer: Callable[[TransferOutcome, str, float], R],
) -> R:
    if not state.ready or state.batcher is None:
        raise NotReady("the model is still loading; retry shortly", retry_after_s=1)
    runner = BatcherRunner(state, state.batcher, request)
    outcome = await run_transfer(transfer, state.settings, runner, state.metrics)
    total_ms = (time.monotonic() - request.state.started) * 1000
    return answer(outcome, request.state.request_id, total_ms)


# ---------------------------------------------------------------------------------------------- multipart
@router.post("/v1/stylize", response_class=Response, responses=IMAGE_RESPONSE, tags=["transfer"])
async def stylize(
    request: Request,
    state: State,
    content: ContentFile,
    style: StyleFile = None,
    style_preset: StylePresetForm = None,
    alpha: AlphaForm = DEFAULT_ALPHA,
    preserve_color: PreserveForm = False,
    max_side: MaxSideForm = None,
    format: FormatForm = OutputFormat.png,
    style_fit: StyleFitForm = None,
) -> Response:
    """Stylize `content` with one `style` image, or the preset painting named by `style_preset` (GET /v1/styles)."""
    await check_form(request)
    transfer = TransferRequest(
        mode=Mode.stylize,
        content=await content.read(),
        styles=await form_styles(request),
        alpha=alpha,
        preserve_color=preserve_color,
        max_side=max_side,
        format=format,
        style_fit=style_fit,
    )
    return await _answer(request, state, transfer, image_response)


@router.post("/v1/interpolate", response_class=Response, responses=IMAGE_RESPONSE, tags=["transfer"])
async def interpolate(
    request: Request,
    state: State,
    content: ContentFile,
    weights: WeightsForm,
    style: StyleFiles = None,
    style_preset: StylePresetForm = None,
    alpha: AlphaForm = DEFAULT_ALPHA,
    preserve_color: PreserveForm = False,
    max_side: MaxSideForm = None,
    format: FormatForm = OutputFormat.png,
    style_fit: StyleFitForm = None,
) -> Response:
    """Convex combination of the transferred features of 2..N styles (paper section 4.4)."""
    await check_form(request, frozenset({"style", "style_preset"}))
    transfer = TransferRequest(
        mode=Mode.interpolate,
        content=await content.read(),
        styles=await form_styles(request),
        alpha=alpha,
        preserve_color=preserve_color,
        max_side=max_side,
        format=format,
        style_fit=style_fit,
        weights=parse_weights_text(weights, state.settings.max_styles),
    )
    return await _answer(request, state, transfer, image_response)


@router.post("/v1/multistyle", response_class=Response, responses=IMAGE_RESPONSE, tags=["transfer"])
async def multistyle(
    request: Request,
    state: State,
    content: ContentFile,
    style: StyleFiles = None,
    style_preset: StylePresetForm = None,
    mask: MaskFiles = None,
    labels: LabelsFile = None,
    feather: FeatherForm = DEFAULT_FEATHER,
    alpha: AlphaForm = DEFAULT_ALPHA,
    preserve_color: PreserveForm = False,
    max_side: MaxSideForm = None,
    format: FormatForm = OutputFormat.png,
    style_fit: StyleFitForm = None,
) -> Response:
    """Each region (masks or a label map) rendered in its own style, blended softly at the borders."""
    await check_form(request, frozenset({"style", "style_preset", "mask"}))
    transfer = TransferRequest(
        mode=Mode.multistyle,
        content=await content.read(),
        styles=await form_styles(request),
        alpha=alpha,
        preserve_color=preserve_color,
        max_side=max_side,
        format=format,
        style_fit=style_fit,
        masks=[await m.read() for m in mask] if mask else None,
        labels=await labels.read() if labels is not None else None,
        feather=feather,
    )
    return await _answer(request, state, transfer, image_response)


# ---------------------------------------------------------------------------------------------- JSON
def _json_body_doc(model: type[JSONRequest]) -> dict[str, Any]:
    """OpenAPI request body of a JSON route (the body is parsed by hand, off the event loop)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


JSON_MODELS: tuple[type[JSONRequest], ...] = (StylizeJSON, InterpolateJSON, MultistyleJSON)


@router.post("/v1/stylize/json", responses=JSON_RESPONSE, tags=["json"], openapi_extra=_json_body_doc(StylizeJSON))
async def stylize_json(request: Request, state: State) -> JSONResponse:
    """`/v1/stylize` with base64 images in a JSON body."""
    transfer = await json_transfer(request, state, StylizeJSON)
    return await _answer(request, state, transfer, json_response)


@router.post(
    "/v1/interpolate/json", responses=JSON_RESPONSE, tags=["json"], openapi_extra=_json_body_doc(InterpolateJSON)
)
async def interpolate_json(request: Request, state: State) -> JSONResponse:
    """`/v1/interpolate` with base64 images in a JSON body."""
    transfer = await json_transfer(request, state, InterpolateJSON)
    return await _answer(request, state, transfer, json_response)


@router.post(
    "/v1/multistyle/json", responses=JSON_RESPONSE, tags=["json"], openapi_extra=_json_body_doc(MultistyleJSON)
)
async def multistyle_json(request: Request, state: State) -> JSONResponse:
    """`/v1/multistyle` with base64 images in a JSON body."""
    transfer = await json_transfer(request, state, MultistyleJSON)
    return await _answer(request, state, transfer, json_response)
