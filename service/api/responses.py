"""A transfer's outcome -> the HTTP answer (image bytes or JSON), its timing headers and their OpenAPI docs."""

from __future__ import annotations

import base64
from typing import Any

from fastapi.responses import JSONResponse, Response

from service.contract import OUTPUT_FORMATS
from service.pipeline import TransferOutcome
from service.schemas import ErrorResponse, ImageJSONResponse

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "invalid_image / bad_request",
        401: "unauthorized (X-API-Key)",
        413: "body_too_large / image_too_large",
        415: "unsupported_media_type",
        422: "invalid_parameter (the message names the field)",
        429: "queue_full (see Retry-After)",
        503: "not_ready / draining / out_of_memory",
        504: "deadline_exceeded (never computed)",
        507: "insufficient_memory",
    }.items()
}
IMAGE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {mime: {} for mime in OUTPUT_FORMATS.values()},
        "description": "The stylized image, with X-Output-Size (WxH; never upscaled), X-Queue-Ms, X-Compute-Ms, "
        "X-Total-Ms, Server-Timing headers",
    },
    **ERROR_RESPONSES,
}
JSON_RESPONSE: dict[int | str, dict[str, Any]] = {200: {"model": ImageJSONResponse}, **ERROR_RESPONSES}


def timing_headers(outcome: TransferOutcome, request_id: str, total_ms: float) -> dict[str, str]:
    queue_ms, compute_ms = outcome.queue_s * 1000, outcome.compute_s * 1000
    return {
        "X-Request-ID": request_id,
        "X-Queue-Ms": f"{queue_ms:.1f}",
        "X-Compute-Ms": f"{compute_ms:.1f}",
        "X-Total-Ms": f"{total_ms:.1f}",
        "X-Batch-Id": str(outcome.batch_id),
        "X-Batch-Size": str(outcome.batch_size),
        # What came back: outputs are never upscaled, so max_side above the content's own size is not met.
        "X-Output-Size": f"{outcome.width}x{outcome.height}",
        "Server-Timing": f"queue;dur={queue_ms:.1f}, compute;dur={compute_ms:.1f}, total;dur={total_ms:.1f}",
    }


def image_response(outcome: TransferOutcome, request_id: str, total_ms: float) -> Response:
    return Response(
        outcome.body,
        media_type=OUTPUT_FORMATS[outcome.format],
        headers=timing_headers(outcome, request_id, total_ms),
    )


def json_response(outcome: TransferOutcome, request_id: str, total_ms: float) -> JSONResponse:
    payload = ImageJSONResponse(
        image=base64.b64encode(outcome.body).decode("ascii"),
        format=outcome.format,
        width=outcome.width,
        height=outcome.height,
        request_id=request_id,
        timing={
            "queue_ms": round(outcome.queue_s * 1000, 1),
            "compute_ms": round(outcome.compute_s * 1000, 1),
            "total_ms": round(total_ms, 1),
        },
    )
    return JSONResponse(payload.model_dump(mode="json"), headers=timing_headers(outcome, request_id, total_ms))
