"""The jobs endpoints: ``POST /v1/jobs``, ``GET /v1/jobs/{id}``, ``GET /v1/jobs/{id}/result``, ``DELETE /v1/jobs/{id}``.

The routes only turn HTTP into :class:`~service.job_store.Jobs` calls; validation, decoding, the queue, the worker
and the results are the store's (:mod:`service.jobs` in memory, :mod:`service.redis_jobs` shared), and through it
:mod:`service.pipeline`, the sync endpoints' own path.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from service.api.requests import (
    AlphaForm,
    LabelsFile,
    MaskFiles,
    MaxSideForm,
    PreserveForm,
    StyleFiles,
    StyleFitForm,
    StylePresetForm,
    check_form,
    form_styles,
)
from service.api.responses import ERROR_RESPONSES
from service.api.state import ServiceState, State
from service.contract import (
    DEFAULT_ALPHA,
    FEATHER,
    OUTPUT_FORMATS,
    SMOOTHING,
    Mode,
    OutputFormat,
    TransferRequest,
    VideoRequest,
)
from service.errors import ClientDisconnected, Draining, InvalidParameter, NotReady
from service.jobs import JOBS_PATH, JobRunner
from service.schemas import FEATHER_DOC, FORMAT_DOC, WEIGHTS_DOC, ErrorResponse, parse_weights_text
from service.video import VIDEO_MEDIA_TYPE

router = APIRouter()
log = logging.getLogger("service.jobs")

ModeForm = Annotated[Mode, Form(description="The transfer: stylize (one style), interpolate or multistyle")]
OptionalWeightsForm = Annotated[
    str | None, Form(description=WEIGHTS_DOC + " Comma-separated, e.g. 0.7,0.3. Mode interpolate only.")
]
OptionalFeatherForm = Annotated[
    float | None,
    Form(ge=FEATHER.low, le=FEATHER.high, allow_inf_nan=False, description=FEATHER_DOC + " Mode multistyle only."),
]
OptionalContentFile = Annotated[
    UploadFile | None, File(description="Content photo (PNG, JPEG, WebP, BMP, TIFF, GIF); or send video instead")
]
VideoFile = Annotated[
    UploadFile | None,
    File(description="Content video instead of a photo (mp4, mov, webm, mkv, gif; constant frame rate): the "
                     "result is an H.264 mp4 at the source's frame rate with its audio track; modes stylize "
                     "and interpolate"),
]  # fmt: skip
OptionalFormatForm = Annotated[OutputFormat | None, Form(description=FORMAT_DOC + " Photos only (a video gives mp4).")]
SmoothingForm = Annotated[
    float | None,
    Form(ge=SMOOTHING.low, le=SMOOTHING.high, allow_inf_nan=False,
         description="Video only: temporal smoothing strength (flow-guided blending with the previous frame; "
                     "less flicker, some ghosting on fast motion); 0 = off"),
]  # fmt: skip
# The fields each mode takes beyond the common ones; any other is refused rather than silently ignored.
MODE_FIELDS: dict[Mode, frozenset[str]] = {
    Mode.stylize: frozenset(),
    Mode.interpolate: frozenset({"weights"}),
    Mode.multistyle: frozenset({"mask", "labels", "feather"}),
}
JOB_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    404: {"model": ErrorResponse, "description": "job_not_found (unknown id, or forgotten long after it ended)"},
    409: {"model": ErrorResponse, "description": "job_not_done (queued, running, failed or cancelled)"},
    410: {"model": ErrorResponse, "description": "job_expired (the result was kept for its time to live, or dropped)"},
    429: {"model": ErrorResponse, "description": "job_queue_full (see Retry-After)"},
}
STATUS_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"description": "The job: state, progress, timings, error, links"},
    404: JOB_ERRORS[404],
}


def _ready(state: ServiceState) -> JobRunner:
    if state.draining:
        raise Draining("the server is shutting down; submit the job to another instance", retry_after_s=1)
    runner = state.job_runner()
    if not state.ready or runner is None:
        raise NotReady("the model is still loading; retry shortly", retry_after_s=1)
    return runner


def _check_mode_fields(mode: Mode, given: dict[str, object]) -> None:
    for name, value in given.items():
        if value is not None and name not in MODE_FIELDS[mode]:
            owners = [str(m) for m, names in MODE_FIELDS.items() if name in names]
            raise InvalidParameter(name, f"not a field of mode {mode}; it belongs to mode {' / '.join(owners)}")


@router.post(
    JOBS_PATH,
    status_code=202,
    responses={202: {"description": "Accepted: the job (id, state, links); Location: its URL"}, **JOB_ERRORS},
    tags=["jobs"],
)
async def submit_job(
    request: Request,
    state: State,
    mode: ModeForm,
    style: StyleFiles = None,
    style_preset: StylePresetForm = None,
    content: OptionalContentFile = None,
    video: VideoFile = None,
    weights: OptionalWeightsForm = None,
    mask: MaskFiles = None,
    labels: LabelsFile = None,
    feather: OptionalFeatherForm = None,
    alpha: AlphaForm = DEFAULT_ALPHA,
    preserve_color: PreserveForm = False,
    max_side: MaxSideForm = None,
    format: OptionalFormatForm = None,
    style_fit: StyleFitForm = None,
    smoothing: SmoothingForm = None,
) -> JSONResponse:
    """Accept a transfer of any mode as a job, up to `STYA2K_JOBS_MAX_SIDE`, or a video (field `video` instead of
    `content`): validated and decoded (a video probed) now, so bad input is refused here; computed when its turn
    comes. Poll the Location for its state and progress."""
    await check_form(request, frozenset({"style", "style_preset", "mask"}))
    _check_mode_fields(mode, {"weights": weights, "mask": mask, "labels": labels, "feather": feather})
    if (content is None) == (video is None):
        raise InvalidParameter("content", "send either a content photo (content) or a video (video), not both")
    if video is None and smoothing is not None:
        raise InvalidParameter("smoothing", "a video field only; a photo has no previous frame to smooth with")
    if video is not None and format is not None:
        raise InvalidParameter("format", "a video job's result is always an H.264 mp4; leave format out")
    runner = _ready(state)
    # The fields a video and a photo job share, read once (the styles' bytes, the parsed weights).
    shared: dict[str, Any] = {
        "mode": mode,
        "styles": await form_styles(request),  # style files and style_preset paintings, in the order sent
        "alpha": alpha,
        "preserve_color": preserve_color,
        "max_side": max_side,
        "style_fit": style_fit,
        "weights": parse_weights_text(weights, state.settings.max_styles) if weights is not None else None,
    }
    if video is not None:
        video_request = VideoRequest(video=await video.read(), smoothing=smoothing or 0.0, **shared)
        return await _accepted(request, state, await state.jobs.submit(video_request, runner))
    assert content is not None
    transfer = TransferRequest(
        content=await content.read(),
        format=format or OutputFormat.png,
        masks=[await m.read() for m in mask] if mask else None,
        labels=await labels.read() if labels is not None else None,
        **({"feather": feather} if feather is not None else {}),
        **shared,
    )
    return await _accepted(request, state, await state.jobs.submit(transfer, runner))


async def _accepted(request: Request, state: ServiceState, job: dict[str, Any]) -> JSONResponse:
    """The 202 for an accepted job; but a client that went away while its job was being prepared would never learn
    the id, the job's only handle: nobody could poll, fetch or cancel it, so it is cancelled instead."""
    if await request.is_disconnected():
        await state.jobs.delete(job["id"])
        log.info("job cancelled: its client disconnected before the 202", extra={"job": job["id"]})
        raise ClientDisconnected("the client disconnected before it got the job's id; the job was cancelled")
    # Relative: with the memory store jobs live on the replica that accepted them, the one behind this very URL
    # (with Redis any replica behind it answers).
    return JSONResponse(job, status_code=202, headers={"Location": job["links"]["self"]})


@router.get(JOBS_PATH + "/{job_id}", responses=STATUS_RESPONSE, tags=["jobs"])
async def job_status(job_id: str, state: State) -> JSONResponse:
    """The job's state (queued, running, done, failed, cancelled, expired), progress, timings and error."""
    return JSONResponse(await state.jobs.status(job_id))


@router.get(
    JOBS_PATH + "/{job_id}/result",
    response_class=Response,
    responses={200: {"content": {mime: {} for mime in (*OUTPUT_FORMATS.values(), VIDEO_MEDIA_TYPE)},
                     "description": "The image (or a video job's mp4)"},
               404: JOB_ERRORS[404], 409: JOB_ERRORS[409], 410: JOB_ERRORS[410]},
    tags=["jobs"],
)  # fmt: skip
async def job_result(job_id: str, state: State) -> Response:
    """The finished job's image or video (409 while it is not done, 410 once its result is gone)."""
    outcome = await state.jobs.fetch(job_id)
    headers = {"X-Output-Size": f"{outcome.width}x{outcome.height}", "X-Job-Id": job_id}
    return Response(outcome.body, media_type=outcome.media_type, headers=headers)


@router.delete(
    JOBS_PATH + "/{job_id}",
    responses={200: {"description": "Cancelled (or already over)"}, 202: {"description": "Stopping"},
               404: JOB_ERRORS[404]},
    tags=["jobs"],
)  # fmt: skip
async def cancel_job(job_id: str, state: State) -> JSONResponse:
    """Cancel: a queued job never runs (200); a running one stops at its next tile step (202, then cancelled); a
    done job's result is deleted (200, expired)."""
    view, stopping = await state.jobs.delete(job_id)
    return JSONResponse(view, status_code=202 if stopping else 200)
