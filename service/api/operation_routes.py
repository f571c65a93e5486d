"""The operational endpoints: liveness, readiness, Prometheus metrics, ``/v1/info`` and the demo page."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse, Response

from service.api.state import State
from service.errors import error_body
from service.schemas import ErrorResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
router = APIRouter()


@router.get("/health/live", tags=["operations"])
async def live() -> dict[str, str]:
    return {"status": "live"}


@router.get("/health/ready", tags=["operations"], responses={503: {"model": ErrorResponse}})
async def ready(state: State) -> JSONResponse:
    if state.draining:
        return JSONResponse(error_body("draining", "the server is shutting down"), status_code=503)
    if not state.ready:
        message = f"model failed to load: {state.load_error}" if state.load_error else "model is loading"
        return JSONResponse(error_body("not_ready", message), status_code=503)
    return JSONResponse({"status": "ready"})


@router.get("/metrics", tags=["operations"], response_class=Response)
async def metrics_text(state: State) -> Response:
    if state.batcher is not None:
        state.metrics.queue_depth.set(state.batcher.depth)
    body, content_type = state.metrics.render()
    return Response(body, media_type=content_type)


@router.get("/v1/info", tags=["operations"])
async def info(state: State) -> dict[str, Any]:
    settings = state.settings
    return {
        "model": state.engine.public_info(),
        "device": str(state.engine.device),
        "dtype": state.engine.dtype_name,
        "ready": state.ready,
        # The first part of this replica's job ids (STYA2K_REPLICA_ID): what the load balancer routes them by
        "replica_id": state.jobs.replica,
        "runtime": state.engine.runtime_info(),
        "batching": {
            "max_batch_size": state.engine.max_batch_size,
            "max_wait_ms": settings.max_wait_ms,
            "queue_size": settings.queue_size,
            "bucket_px": settings.bucket_px,
        },
        "limits": {
            "max_body_bytes": settings.max_body_bytes,
            "max_input_pixels": settings.max_input_pixels,
            "max_side": settings.max_side,
            "default_side": settings.default_side,
            "style_size": settings.style_size,
            "style_fit": settings.style_fit,  # the default of a request's style_fit
            "max_styles": settings.max_styles,
            "deadline_ms": settings.deadline_ms,
            # The jobs API (POST /v1/jobs): larger outputs than the sync endpoints, in time and memory bounds
            "jobs_max_side": settings.jobs_max_side,
            "jobs_queue_size": settings.jobs_queue_size,
            "jobs_memory_bytes": settings.jobs_memory_bytes,
            "job_timeout_s": settings.job_timeout_s,
            "job_result_ttl_s": settings.job_result_ttl_s,
            "job_result_bytes": settings.job_result_bytes,
            # Video jobs (POST /v1/jobs with a video field)
            "video_max_side": settings.video_max_side,
            "video_max_seconds": settings.video_max_seconds,
            "video_max_frames": settings.video_max_frames,
            "video_max_input_pixels": settings.video_max_input_pixels,
            "video_max_bytes": settings.video_max_bytes,
        },
        "jobs": await state.jobs.info(),
        "cache": {
            "bytes": state.engine.cache.nbytes,
            "max_bytes": settings.cache_bytes,
            "entries": len(state.engine.cache),
        },
    }


@router.get("/", include_in_schema=False)
async def index() -> HTMLResponse:
    page = STATIC_DIR / "index.html"
    if page.is_file():
        html = page.read_text(encoding="utf-8")
        return HTMLResponse(html, headers=page_security_headers(html))
    return HTMLResponse(
        "<!doctype html><title>StyA2K Serve</title><h1>StyA2K Serve</h1>"
        "<p>The demo page is not installed. See <a href='/docs'>/docs</a> for the API.</p>"
    )


@router.get("/sample-photo.jpg", include_in_schema=False)
async def sample_photo() -> Response:
    """The demo page's sample photo (CC-BY-4.0; service/presets/PROVENANCE.md)."""
    return Response((STATIC_DIR / "sample-photo.jpg").read_bytes(), media_type="image/jpeg",
                    headers={"Cache-Control": "public, max-age=86400"})  # fmt: skip


def page_security_headers(html: str) -> dict[str, str]:
    """Content-Security-Policy for the demo page: its own inline scripts (by hash) and same-origin calls only."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(html)
    )
    policy = (
        f"default-src 'none'; script-src {hashes or chr(39) + 'none' + chr(39)}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' blob: data:; media-src 'self' blob:; connect-src 'self'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    )
    return {"Content-Security-Policy": policy, "Referrer-Policy": "no-referrer"}
