"""Python client for the StyA2K Serve HTTP API (docs/API.md), synchronous and asynchronous; needs httpx only.

    from stya2k_client import Client, Preset
    with Client("http://127.0.0.1:8000") as client:
        result = client.stylize("photo.jpg", "painting.jpg", alpha=0.8)
        result.save("out.png")
        client.stylize("photo.jpg", Preset("starry_night")).save("starry.png")  # a painting the server ships

A :class:`Preset` (``client.styles()`` lists them) goes wherever a style image does; it is sent as a
``style_preset`` field in its place, so mixed lists keep their order (weights and masks follow it).

:class:`Client` (``httpx.Client``) and :class:`AsyncClient` (``httpx.AsyncClient``) share one core that builds
the requests, decides on retries and turns responses into results or typed exceptions; only the sending and
the sleeping differ. Requests answered 429 (queue full) or 503 (not ready, draining, transient out of memory)
are retried up to ``max_retries`` times, waiting what ``Retry-After`` says (capped by ``max_retry_wait_s``)
or an exponential backoff when the header is absent. A connection that closes before any answer (a balancer
reloading closes its idle keep-alive connections; a request sent on one at that moment gets none) is retried
within the same budget for the requests a repeat cannot change anything with: the transfers (pure functions of
their inputs), GET and DELETE. A job submission is never repeated that way: it could start a second job.

Work that outlives a request (large ``max_side``, up to the server's ``STYA2K_JOBS_MAX_SIDE``) goes through the
jobs API::

    job = client.submit("photo.jpg", "painting.jpg", max_side=4096)
    job.wait(timeout=600, on_progress=lambda s: print(s.done, "/", s.total))
    job.result().save("out.png")

and so do videos (``POST /v1/jobs`` with a ``video`` field; progress in frames, the result an H.264 mp4)::

    job = client.submit_video("clip.mp4", "painting.jpg", max_side=512, smoothing=0.5)
    job.wait(timeout=3600, on_progress=lambda s: print(s.done, "/", s.total, s.unit))
    job.result().save("out.mp4")
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeAlias

import httpx

ImageInput: TypeAlias = "bytes | str | os.PathLike[str] | IO[bytes] | Any"
"""An image: file bytes, a path, a binary file object, or a PIL image (sent as PNG)."""
VideoInput: TypeAlias = "bytes | str | os.PathLike[str] | IO[bytes]"
"""A video file (mp4, mov, webm, mkv, gif, ...): its bytes, a path, or a binary file object."""

RETRY_STATUSES = frozenset({429, 503})
OUTPUT_FORMATS = ("png", "jpeg", "webp")
STYLE_FITS = ("crop", "whole")  # style_fit: crop = centred square, whole = the whole image (the server's contract)
_MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
VIDEO_FORMAT = "mp4"  # a video job's result is always an H.264 mp4


@dataclass(frozen=True)
class Preset:
    """A preset style of the server, by name (``GET /v1/styles``; :meth:`Client.styles`): accepted wherever a
    style image is, and sent as a ``style_preset`` field instead of a file."""

    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError("Preset: give the preset's name, e.g. Preset('starry_night')")


StyleInput: TypeAlias = "ImageInput | Preset"
"""A style: an image (see :data:`ImageInput`) or a server's :class:`Preset`."""


# ---------------------------------------------------------------------------------------------- errors
class StyA2KError(Exception):
    """Base of every client error. ``status`` is None when no HTTP answer came back."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        where = f"HTTP {self.status} {self.code}: " if self.status is not None else ""
        return f"{where}{self.message}"


class ConnectionFailed(StyA2KError):
    """The server could not be reached, or the connection broke."""


class RequestTimeout(StyA2KError):
    """No complete answer within the client's timeout."""


class BadRequest(StyA2KError):
    """400: a corrupt image (``invalid_image``), a video that is not readable, has no video stream or is truncated
    (``invalid_video``), or a malformed request (``bad_request``)."""


class Unauthorized(StyA2KError):
    """401: missing or wrong API key."""


class NotFound(StyA2KError):
    """404 / 405: no such endpoint or method (wrong base URL?)."""


class PayloadTooLarge(StyA2KError):
    """413: the body, an image or a video (``video_too_large``: bytes, seconds, frames, frame size) exceeds the
    server's limits."""


class UnsupportedMediaType(StyA2KError):
    """415: not an image format the server reads, or a video it cannot take (``unsupported_video``: a codec it
    cannot decode, a variable frame rate)."""


class InvalidParameter(StyA2KError):
    """422: a parameter is out of range; the message names it."""


class QueueFull(StyA2KError):
    """429: the server's queue is full (raised once the retries are used up)."""


class ServiceUnavailable(StyA2KError):
    """503: not ready, draining, or short of memory for the moment (raised once the retries are used up)."""


class DeadlineExceeded(StyA2KError):
    """504: the request could not be served within its deadline."""


class InsufficientMemory(StyA2KError):
    """507: the request does not fit on the server's device even alone; use a smaller ``max_side``."""


class ServerError(StyA2KError):
    """500 or any other unexpected status."""


class JobNotDone(StyA2KError):
    """409: the job's result was asked for before it was done (or the job failed / was cancelled)."""


class JobExpired(StyA2KError):
    """410: the job's result is gone (kept for the server's time to live, dropped for room, or deleted)."""


class JobFailed(StyA2KError):
    """A job ended without a result: ``code`` is the server's reason (``deadline_exceeded``, ...)."""


class JobCancelled(JobFailed):
    """A job was cancelled (by ``cancel()`` / DELETE, or by a server shutdown)."""


_BY_CODE: dict[str, type[StyA2KError]] = {
    "invalid_image": BadRequest,
    "invalid_video": BadRequest,
    "bad_request": BadRequest,
    "unauthorized": Unauthorized,
    "not_found": NotFound,
    "method_not_allowed": NotFound,
    "body_too_large": PayloadTooLarge,
    "image_too_large": PayloadTooLarge,
    "unsupported_media_type": UnsupportedMediaType,
    "unsupported_video": UnsupportedMediaType,
    "video_too_large": PayloadTooLarge,
    "invalid_parameter": InvalidParameter,
    "queue_full": QueueFull,
    "not_ready": ServiceUnavailable,
    "draining": ServiceUnavailable,
    "out_of_memory": ServiceUnavailable,
    "deadline_exceeded": DeadlineExceeded,
    "insufficient_memory": InsufficientMemory,
    "internal": ServerError,
    "job_not_found": NotFound,
    "job_not_done": JobNotDone,
    "job_expired": JobExpired,
    "job_queue_full": QueueFull,
    "job_too_large": PayloadTooLarge,
    "job_too_long": PayloadTooLarge,
}
_BY_STATUS: dict[int, type[StyA2KError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    405: NotFound,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    409: JobNotDone,
    410: JobExpired,
    422: InvalidParameter,
    429: QueueFull,
    503: ServiceUnavailable,
    504: DeadlineExceeded,
    507: InsufficientMemory,
}


# ---------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class StylizedImage:
    """A transfer result: the encoded image and the server's timing headers (milliseconds)."""

    data: bytes
    format: str
    request_id: str | None = None
    queue_ms: float | None = None
    compute_ms: float | None = None
    total_ms: float | None = None
    output_size: tuple[int, int] | None = None  # the server's X-Output-Size header, (width, height)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height): the server's ``X-Output-Size``, else read from the image (Pillow needed then)."""
        if self.output_size is not None:
            return self.output_size
        from PIL import Image

        with Image.open(io.BytesIO(self.data)) as img:
            return img.size

    def to_pil(self) -> Any:
        """The image as a PIL image (needs Pillow, which the client itself does not)."""
        from PIL import Image

        img = Image.open(io.BytesIO(self.data))
        img.load()
        return img

    def save(self, path: str | os.PathLike[str]) -> Path:
        target = Path(path)
        target.write_bytes(self.data)
        return target


@dataclass(frozen=True)
class StylizedVideo:
    """A video job's result: the H.264 mp4, its size (``X-Output-Size``) and the job's ``result`` fields
    (``frames``, ``fps``, ``frame_rate``, ``audio``, ``smoothing``, ...; empty when the job's last status
    seen was not the done one)."""

    data: bytes
    size: tuple[int, int] | None  # (width, height)
    details: dict[str, Any] = field(default_factory=dict)
    request_id: str | None = None
    format: str = VIDEO_FORMAT

    @property
    def frames(self) -> int | None:
        frames = self.details.get("frames")
        return int(frames) if frames is not None else None

    def save(self, path: str | os.PathLike[str]) -> Path:
        target = Path(path)
        target.write_bytes(self.data)
        return target


JOB_END_STATES = frozenset({"done", "failed", "cancelled", "expired"})


@dataclass(frozen=True)
class JobStatus:
    """A job as ``GET /v1/jobs/{id}`` describes it (docs/API.md "Jobs"); ``raw`` is the whole answer."""

    id: str
    state: str  # queued | running | done | failed | cancelled | expired
    done: int  # steps done (tiles of both passes; 1 for a job computed in one pass), or a video's frames
    total: int
    queued_s: float | None
    running_s: float | None
    total_s: float | None
    error_code: str | None
    error_message: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)
    kind: str = "image"  # or "video"
    unit: str = "steps"  # what done / total count: "steps", or a video's "frames"
    result: dict[str, Any] | None = None  # a done job's result fields (format, width, height, bytes, ...)

    @property
    def finished(self) -> bool:
        return self.state in JOB_END_STATES

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> JobStatus:
        progress, timings, error = body.get("progress", {}), body.get("timings", {}), body.get("error") or {}
        return cls(
            id=str(body["id"]),
            state=str(body["state"]),
            done=int(progress.get("done", 0)),
            total=int(progress.get("total", 1)),
            queued_s=timings.get("queued_s"),
            running_s=timings.get("running_s"),
            total_s=timings.get("total_s"),
            error_code=error.get("code"),
            error_message=error.get("message"),
            raw=body,
            kind=str(body.get("kind", "image")),
            unit=str(progress.get("unit", "steps")),
            result=body.get("result"),
        )


@dataclass(frozen=True)
class Health:
    live: bool
    ready: bool
    detail: str  # "ready", or why not (e.g. "model is loading")


# ---------------------------------------------------------------------------------------------- core
@dataclass
class PreparedRequest:
    """Everything needed to send one request; built once, sent (and re-sent on retries) by either client."""

    method: str
    path: str
    files: list[tuple[str, tuple[str | None, bytes, str]]] = field(default_factory=list)
    data: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    replayable: bool = True  # sending it twice changes nothing on the server (not so for a job submission)

    def send_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"headers": self.headers}
        if self.files:
            kwargs["files"] = self.files
            kwargs["data"] = self.data
        return kwargs


def read_image(image: ImageInput, what: str) -> bytes:
    """Any supported image input to file bytes (PIL images are encoded as PNG)."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ValueError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    if hasattr(image, "read"):
        data = image.read()
        if not isinstance(data, bytes):
            raise TypeError(f"{what}: the file object must be opened in binary mode")
        return data
    if hasattr(image, "save") and hasattr(image, "mode"):  # a PIL image
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    raise TypeError(f"{what}: expected bytes, a path, a binary file or a PIL image, got {type(image).__name__}")


def read_video(video: VideoInput, what: str = "video") -> tuple[str, bytes]:
    """A video input as (file name, bytes); the name is the path's, else ``what``."""
    if isinstance(video, bytes | bytearray | memoryview | str | os.PathLike) or hasattr(video, "read"):
        name = Path(video).name if isinstance(video, str | os.PathLike) else what
        return name, read_image(video, what)
    raise TypeError(f"{what}: expected bytes, a path or a binary file, got {type(video).__name__}")


def _style_files(styles: Sequence[StyleInput]) -> list[tuple[str, tuple[str | None, bytes, str]]]:
    """The style parts in the caller's order: a file per image, a ``style_preset`` text part per :class:`Preset`
    (the server indexes styles in the order the parts arrive)."""
    return [
        ("style_preset", (None, style.name.encode(), "text/plain")) if isinstance(style, Preset)
        else ("style", (f"style{index}", read_image(style, f"style[{index}]"), "application/octet-stream"))
        for index, style in enumerate(styles)
    ]  # fmt: skip


def _check_style_fit(style_fit: str | None) -> None:
    if style_fit is not None and style_fit not in STYLE_FITS:
        raise ValueError(f"style_fit {style_fit!r} is not supported; use one of {', '.join(STYLE_FITS)}")


def _common_fields(
    alpha: float,
    preserve_color: bool,
    max_side: int | None,
    weights: Sequence[float] | None,
    style_fit: str | None,
) -> dict[str, str]:
    """The form fields photos and videos share."""
    data = {"alpha": repr(float(alpha)), "preserve_color": "true" if preserve_color else "false"}
    if max_side is not None:
        data["max_side"] = str(int(max_side))
    if weights is not None:
        data["weights"] = ",".join(repr(float(w)) for w in weights)
    if style_fit is not None:  # None: the server's STYA2K_STYLE_FIT
        data["style_fit"] = str(style_fit)
    return data


class _Core:
    """Request building, retry policy and response parsing shared by the sync and async clients."""

    def __init__(
        self,
        *,
        api_key: str | None,
        max_retries: int,
        max_retry_wait_s: float,
        backoff_s: float,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.api_key = api_key
        self.max_retries = max_retries
        self.max_retry_wait_s = max_retry_wait_s
        self.backoff_s = backoff_s

    # ---- building
    def _headers(self, deadline_ms: float | None, request_id: str | None) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        if deadline_ms is not None:
            headers["X-Deadline-Ms"] = f"{deadline_ms:g}"
        if request_id:
            headers["X-Request-ID"] = request_id
        return headers

    def transfer(
        self,
        mode: str,
        content: ImageInput,
        styles: Sequence[StyleInput],
        *,
        alpha: float,
        preserve_color: bool,
        max_side: int | None,
        format: str,
        weights: Sequence[float] | None = None,
        masks: Sequence[ImageInput] | None = None,
        labels: ImageInput | None = None,
        feather: float | None = None,
        style_fit: str | None = None,
        deadline_ms: float | None = None,
        request_id: str | None = None,
    ) -> PreparedRequest:
        if format not in OUTPUT_FORMATS:
            raise ValueError(f"format {format!r} is not supported; use one of {', '.join(OUTPUT_FORMATS)}")
        _check_style_fit(style_fit)
        files = [("content", ("content", read_image(content, "content"), "application/octet-stream"))]
        files += _style_files(styles)
        for index, mask in enumerate(masks or ()):
            files.append(("mask", (f"mask{index}", read_image(mask, f"mask[{index}]"), "application/octet-stream")))
        if labels is not None:
            files.append(("labels", ("labels", read_image(labels, "labels"), "application/octet-stream")))
        data = {**_common_fields(alpha, preserve_color, max_side, weights, style_fit), "format": format}
        if feather is not None:
            data["feather"] = repr(float(feather))
        return PreparedRequest("POST", f"/v1/{mode}", files, data, self._headers(deadline_ms, request_id))

    def job(self, mode: str, content: ImageInput, styles: Sequence[StyleInput], **options: Any) -> PreparedRequest:
        """``POST /v1/jobs``: the form of ``POST /v1/<mode>`` plus its ``mode`` field."""
        prepared = self.transfer(mode, content, styles, **options)
        return dataclasses.replace(prepared, path="/v1/jobs", data={**prepared.data, "mode": mode}, replayable=False)

    def video_job(
        self,
        video: VideoInput,
        styles: Sequence[StyleInput],
        *,
        weights: Sequence[float] | None,
        alpha: float,
        preserve_color: bool,
        max_side: int | None,
        style_fit: str | None,
        smoothing: float | None,
    ) -> PreparedRequest:
        """``POST /v1/jobs`` with a ``video`` field: one style (stylize) or several (interpolate; equal weights
        unless given)."""
        _check_style_fit(style_fit)
        if not styles:
            raise ValueError("style: give at least one style image")
        mode = "interpolate" if len(styles) > 1 else "stylize"
        if mode == "interpolate" and weights is None:
            weights = [1.0] * len(styles)
        name, data = read_video(video)
        files = [("video", (name, data, "application/octet-stream")), *_style_files(styles)]
        fields = {"mode": mode, **_common_fields(alpha, preserve_color, max_side, weights, style_fit)}
        if smoothing is not None:  # None: off (the server's default, 0)
            fields["smoothing"] = repr(float(smoothing))
        return PreparedRequest("POST", "/v1/jobs", files, fields, self._headers(None, None), replayable=False)

    def get(self, path: str) -> PreparedRequest:
        return PreparedRequest("GET", path, headers=self._headers(None, None))

    def delete(self, path: str) -> PreparedRequest:
        return PreparedRequest("DELETE", path, headers=self._headers(None, None))

    def job_status(self, response: httpx.Response) -> JobStatus:
        if response.status_code not in (200, 202):
            raise self.error(response)
        try:
            return JobStatus.from_json(response.json())
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ServerError(f"not a job status: {response.text[:200]!r}", status=response.status_code) from None

    def settle(self, status: JobStatus) -> JobStatus:
        """A finished job's status, or the error of a job that ended without a result."""
        if status.state == "done":
            return status
        if status.state == "expired":
            reason = status.raw.get("expired_reason", "")
            raise JobExpired(f"job {status.id}: the result is gone ({reason})", status=410, code="job_expired")
        cls = JobCancelled if status.state == "cancelled" else JobFailed
        message = status.error_message or f"job {status.id} was {status.state}"
        raise cls(f"job {status.id} {status.state}: {message}", code=status.error_code or status.state)

    # ---- retries
    def retry_delay(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before retrying ``response`` (attempt 0 = the first try), or None: do not retry."""
        if response.status_code not in RETRY_STATUSES or attempt >= self.max_retries:
            return None
        asked = _retry_after(response)
        delay = asked if asked is not None else self.backoff_s * (2**attempt)
        return min(max(delay, 0.0), self.max_retry_wait_s)

    def resend_delay(self, prepared: PreparedRequest, exc: httpx.TransportError, attempt: int) -> float | None:
        """Seconds to wait before sending ``prepared`` again after ``exc``, or None: raise it.

        Only a connection that ended without an answer qualifies (never a timeout: the server may still be
        working on it), and only for a request whose repeat changes nothing on the server. The first resend
        goes at once: the usual cause is a keep-alive connection the other side closed as it was reused."""
        dropped = isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError)
        if not dropped or not prepared.replayable or attempt >= self.max_retries:
            return None
        return 0.0 if attempt == 0 else min(self.backoff_s * (2 ** (attempt - 1)), self.max_retry_wait_s)

    # ---- parsing
    def error(self, response: httpx.Response) -> StyA2KError:
        code, message = _error_fields(response)
        cls = _BY_CODE.get(code or "") or _BY_STATUS.get(response.status_code, ServerError)
        return cls(
            message,
            status=response.status_code,
            code=code or "unknown",
            request_id=response.headers.get("x-request-id"),
            retry_after_s=_retry_after(response),
        )

    def image(self, response: httpx.Response, fmt: str) -> StylizedImage:
        if response.status_code != 200:
            raise self.error(response)
        media = response.headers.get("content-type", "").split(";")[0].strip()
        actual = next((name for name, value in _MEDIA_TYPES.items() if value == media), fmt)
        return StylizedImage(
            data=response.content,
            format=actual,
            request_id=response.headers.get("x-request-id"),
            queue_ms=_float_header(response, "x-queue-ms"),
            compute_ms=_float_header(response, "x-compute-ms"),
            total_ms=_float_header(response, "x-total-ms"),
            output_size=_output_size(response),
        )

    def video(self, response: httpx.Response, status: JobStatus) -> StylizedVideo:
        """A video job's ``/result``; ``status`` (the job's last seen) supplies the result's details."""
        if response.status_code != 200:
            raise self.error(response)
        return StylizedVideo(
            data=response.content,
            size=_output_size(response),
            details=dict(status.result or {}) if status.state == "done" else {},
            request_id=response.headers.get("x-request-id"),
        )

    def json(self, response: httpx.Response) -> dict[str, Any]:
        if response.status_code != 200:
            raise self.error(response)
        body = response.json()
        if not isinstance(body, dict):
            raise ServerError(f"expected a JSON object, got {type(body).__name__}", status=response.status_code)
        return body

    def health(self, live: httpx.Response, ready: httpx.Response) -> Health:
        if ready.status_code == 200:
            return Health(live=live.status_code == 200, ready=True, detail="ready")
        _, message = _error_fields(ready)
        return Health(live=live.status_code == 200, ready=False, detail=message)


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw.strip()))
    except ValueError:
        return None  # an HTTP date: not sent by this server; fall back to the backoff


def _float_header(response: httpx.Response, name: str) -> float | None:
    raw = response.headers.get(name)
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def _output_size(response: httpx.Response) -> tuple[int, int] | None:
    """``X-Output-Size: WxH`` as (width, height)."""
    width, _, height = response.headers.get("x-output-size", "").partition("x")
    return (int(width), int(height)) if width.isdigit() and height.isdigit() else None


def _error_fields(response: httpx.Response) -> tuple[str | None, str]:
    """(code, message) of the API's error body; a readable fallback when a proxy answered instead."""
    try:
        body = response.json()
        error = body["error"]
        return str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        text = response.text.strip().replace("\n", " ")[:200]
        return None, text or response.reason_phrase or f"HTTP {response.status_code}"


def _transport_error(exc: httpx.TransportError, url: str) -> StyA2KError:
    if isinstance(exc, httpx.TimeoutException):
        return RequestTimeout(f"no answer from {url} within the timeout ({type(exc).__name__})")
    return ConnectionFailed(f"cannot talk to {url}: {exc or type(exc).__name__}")


def _timeout(timeout_s: float | None) -> httpx.Timeout:
    if timeout_s is None:
        return httpx.Timeout(None)
    return httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))


class _Watch:
    """The polling decisions of ``Job.wait`` (sync and async alike): progress reports, the end, the timeout."""

    def __init__(
        self, job_id: str, timeout_s: float | None, on_progress: Callable[[JobStatus], None] | None, poll_s: float
    ) -> None:
        self.job_id = job_id
        self.timeout_s = timeout_s
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.on_progress = on_progress
        self.poll_s = poll_s
        self._last: tuple[int, int] | None = None

    def see(self, status: JobStatus) -> bool:
        """Report ``status`` when its progress (done, total) changed; True once the job has ended.

        A running job's complete count (done == total: the last tile or frame computed, the result being
        encoded) is held back for the end status, so the last value is reported once, with state done. An end
        with the numbers already reported (a failure, a cancel) is not reported again: ``wait`` raises it."""
        seen = (status.done, status.total)
        held = not status.finished and status.total > 0 and status.done >= status.total
        if seen != self._last and not held:
            if self.on_progress is not None:
                self.on_progress(status)
            self._last = seen
        return status.finished

    def delay(self) -> float:
        """Seconds until the next poll; raises RequestTimeout once the wait's timeout has passed."""
        if self.deadline is None:
            return self.poll_s
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise RequestTimeout(f"job {self.job_id} did not end within {self.timeout_s:g} s (it keeps running)")
        return min(self.poll_s, remaining)


# ---------------------------------------------------------------------------------------------- clients
def _styles(styles: StyleInput | Sequence[StyleInput]) -> list[ImageInput]:
    """One style or a list of them (bytes are one image, not a sequence of styles)."""
    return list(styles) if isinstance(styles, list | tuple) else [styles]


def _options(
    alpha: float,
    preserve_color: bool,
    max_side: int | None,
    format: str,
    deadline_ms: float | None,
    style_fit: str | None = None,
) -> dict[str, Any]:
    """The transfer options every transfer method takes."""
    return {
        "alpha": alpha,
        "preserve_color": preserve_color,
        "max_side": max_side,
        "format": format,
        "deadline_ms": deadline_ms,
        "style_fit": style_fit,
    }


class Client:
    """Synchronous client. Use as a context manager, or call :meth:`close`.

    ``timeout_s`` bounds each attempt (connect at most 10 s of it); ``None`` waits forever.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout_s: float | None = 60.0,
        max_retries: int = 3,
        max_retry_wait_s: float = 10.0,
        backoff_s: float = 0.5,
        http: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._core = _Core(
            api_key=api_key, max_retries=max_retries, max_retry_wait_s=max_retry_wait_s, backoff_s=backoff_s
        )
        self._http = http or httpx.Client(base_url=self.base_url, timeout=_timeout(timeout_s))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, prepared: PreparedRequest) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.request(prepared.method, prepared.path, **prepared.send_kwargs())
            except httpx.TransportError as exc:
                resend = self._core.resend_delay(prepared, exc, attempt)
                if resend is None:
                    raise _transport_error(exc, self.base_url) from exc
                time.sleep(resend)
                attempt += 1
                continue
            delay = self._core.retry_delay(response, attempt)
            if delay is None:
                return response
            time.sleep(delay)
            attempt += 1

    def stylize(
        self,
        content: ImageInput,
        style: StyleInput,
        *,
        alpha: float = 1.0,
        preserve_color: bool = False,
        max_side: int | None = None,
        format: str = "png",
        deadline_ms: float | None = None,
        style_fit: str | None = None,
    ) -> StylizedImage:
        """``content`` in the style of ``style``; ``alpha`` in 0..1 is the style strength. ``style_fit``: "crop"
        (a centred square of the style) or "whole" (all of it, long side to the server's style size); None: the
        server's default (STYA2K_STYLE_FIT). Every transfer method takes it."""
        options = _options(alpha, preserve_color, max_side, format, deadline_ms, style_fit)
        prepared = self._core.transfer("stylize", content, [style], **options)
        return self._core.image(self._send(prepared), format)

    def interpolate(
        self,
        content: ImageInput,
        styles: Sequence[StyleInput],
        weights: Sequence[float],
        *,
        alpha: float = 1.0,
        preserve_color: bool = False,
        max_side: int | None = None,
        format: str = "png",
        deadline_ms: float | None = None,
        style_fit: str | None = None,
    ) -> StylizedImage:
        """A blend of 2..N styles; ``weights`` (one per style, >= 0) are normalised by the server."""
        options = _options(alpha, preserve_color, max_side, format, deadline_ms, style_fit)
        prepared = self._core.transfer("interpolate", content, styles, weights=weights, **options)
        return self._core.image(self._send(prepared), format)

    def multistyle(
        self,
        content: ImageInput,
        styles: Sequence[StyleInput],
        *,
        masks: Sequence[ImageInput] | None = None,
        labels: ImageInput | None = None,
        feather: float = 8.0,
        alpha: float = 1.0,
        preserve_color: bool = False,
        max_side: int | None = None,
        format: str = "png",
        deadline_ms: float | None = None,
        style_fit: str | None = None,
    ) -> StylizedImage:
        """Each region in its own style: one grayscale mask per style (white = region) or one label map."""
        options = _options(alpha, preserve_color, max_side, format, deadline_ms, style_fit)
        prepared = self._core.transfer(
            "multistyle", content, styles, masks=masks, labels=labels, feather=feather, **options
        )
        return self._core.image(self._send(prepared), format)

    def submit(
        self,
        content: ImageInput,
        styles: StyleInput | Sequence[StyleInput],
        *,
        mode: str = "stylize",
        weights: Sequence[float] | None = None,
        masks: Sequence[ImageInput] | None = None,
        labels: ImageInput | None = None,
        feather: float | None = None,
        alpha: float = 1.0,
        preserve_color: bool = False,
        max_side: int | None = None,
        format: str = "png",
        style_fit: str | None = None,
    ) -> Job:
        """Submit a transfer of any ``mode`` (stylize, interpolate, multistyle) as a job (``POST /v1/jobs``), for
        outputs beyond the sync endpoints' ``max_side``; bad input raises here. ``styles``: one image or a list."""
        options = _options(alpha, preserve_color, max_side, format, None, style_fit)
        prepared = self._core.job(
            mode, content, _styles(styles), weights=weights, masks=masks, labels=labels, feather=feather, **options
        )
        return Job(self, self._core.job_status(self._send(prepared)), format)

    def submit_video(
        self,
        video: VideoInput,
        styles: StyleInput | Sequence[StyleInput],
        *,
        weights: Sequence[float] | None = None,
        alpha: float = 1.0,
        preserve_color: bool = False,
        max_side: int | None = None,
        style_fit: str | None = None,
        smoothing: float | None = None,
    ) -> VideoJob:
        """Submit a video (mp4, mov, webm, mkv, gif, ...) as a job: every frame in the style of ``styles`` (one
        image: stylize; a list of several: interpolate, with ``weights`` or equal ones), the result an H.264 mp4
        at the source's frame rate with its audio. ``max_side``: the output's longest side (default the server's
        STYA2K_DEFAULT_SIDE, at most its STYA2K_VIDEO_MAX_SIDE); ``smoothing`` (0..0.95): temporal smoothing,
        less flicker (None: off). The video is checked at submission: BadRequest (not a video, no video stream,
        truncated), UnsupportedMediaType (codec, variable frame rate), PayloadTooLarge (the STYA2K_VIDEO_*
        limits) raise here. The job's progress counts frames; ``result()`` is a :class:`StylizedVideo`."""
        prepared = self._core.video_job(
            video, _styles(styles), weights=weights, alpha=alpha, preserve_color=preserve_color, max_side=max_side,
            style_fit=style_fit, smoothing=smoothing,
        )  # fmt: skip
        return VideoJob(self, self._core.job_status(self._send(prepared)))

    def job(self, job_id: str, format: str = "png") -> Job:
        """A job submitted earlier (to this same server: jobs live on the replica that accepted them); a
        :class:`VideoJob` when it is a video's."""
        status = self._core.job_status(self._send(self._core.get(f"/v1/jobs/{job_id}")))
        return VideoJob(self, status) if status.kind == "video" else Job(self, status, format)

    def info(self) -> dict[str, Any]:
        """``GET /v1/info``: model, device, batching and limits."""
        return self._core.json(self._send(self._core.get("/v1/info")))

    def styles(self) -> list[dict[str, Any]]:
        """``GET /v1/styles``: the server's preset styles (name, title, artist, year, licence, source, image and
        thumbnail paths); pass ``Preset(entry["name"])`` as a style."""
        return list(self._core.json(self._send(self._core.get("/v1/styles")))["styles"])

    def health(self) -> Health:
        """Liveness and readiness; never raises for "not ready", only when the server cannot be reached."""
        try:
            live = self._http.get("/health/live")
            ready = self._http.get("/health/ready")
        except httpx.TransportError as exc:
            raise _transport_error(exc, self.base_url) from exc
        return self._core.health(live, ready)

    def wait_until_ready(self, timeout_s: float = 60.0, poll_s: float = 0.2) -> Health:
        """Poll :meth:`health` until ready; raises ServiceUnavailable (or ConnectionFailed) after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                health = self.health()
                if health.ready:
                    return health
                last: StyA2KError = ServiceUnavailable(health.detail, status=503, code="not_ready")
            except (ConnectionFailed, RequestTimeout) as exc:
                last = exc
            if time.monotonic() >= deadline:
                raise last
            time.sleep(poll_s)


class AsyncClient:
    """Asynchronous client with the same methods as :class:`Client` (``await client.stylize(...)``)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout_s: float | None = 60.0,
        max_retries: int = 3,
        max_retry_wait_s: float = 10.0,
        backoff_s: float = 0.5,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._core = _Core(
            api_key=api_key, max_retries=max_retries, max_retry_wait_s=max_retry_wait_s, backoff_s=backoff_s
        )
        self._http = http or httpx.AsyncClient(base_url=self.base_url, timeout=_timeout(timeout_s))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, prepared: PreparedRequest) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.request(prepared.method, prepared.path, **prepared.send_kwargs())
            except httpx.TransportError as exc:
                resend = self._core.resend_delay(prepared, exc, attempt)
                if resend is None:
                    raise _transport_error(exc, self.base_url) from exc
                await asyncio.sleep(resend)
                attempt += 1
                continue
            delay = self._core.retry_delay(response, attempt)
            if delay is None:
                return response
            await asyncio.sleep(delay)
            attempt += 1

    async def stylize(
        self,
        content: ImageInput,
        style: StyleInput,
        *,
        alpha: float = 1.0,
        preserve_color: bool = False,
        max_side: int | None = None,
        format: str = "png",
        deadline_ms: float | None = None,
        style_fit: str | None = None,
    ) -> StylizedImage:
        options = _options(alpha, preserve_color, max_side, format, deadline_ms, style_fit)
        prepared = self._core.transfer("stylize", content, [style], **options)
        return self._core.image(await self._send(prepared), format)

    async def interpolate(
        self,
        content: ImageInput,
        styles: Sequence[StyleInput],
        weights: Sequence[float],
        *,
        alpha: float = 1.0,
        preserve_color: bool = False,
        max_side: int | None = None,
        format: str = "png",
        deadline_ms: float | None = None,
        style_fit: str | None = None,
    ) -> StylizedImage:
        options = _options(alpha, preserve_color, max_side, format, deadline_ms, style_fit)
        prepared = self._core.transfer("interpolate", content, styles, weights=weights, **options)
        return self._core.image(await self._send(prepared), format)

    async def multistyle(
        self,
        content: ImageInput,
        styles: Sequence[StyleInput],
        *,
        masks: Sequence[ImageInput] | None = None,
        labels: ImageInput | None = None,
        feather: float = 8.0,
        alpha: float = 1.0,
        preserve_color: bool = False,
        max_side: int | None = None,
        format: str = "png",
        deadline_ms: float | None = None,
        style_fit: str | None = None,
    ) -> StylizedImage:
        options = _options(alpha, preserve_color, max_side, format, deadline_ms, style_fit)
        prepared = self._core.transfer(
            "multistyle", content, styles, masks=masks, labels=labels, feather=feather, **options
        )
        return self._core.image(await self._send(prepared), format)

    async def submit(
        self,
        content: ImageInput,
        styles: StyleInput | Sequence[StyleInput],
        *,
        mode: str = "stylize",
        weights: Sequence[float] | None = None,
        masks: Sequence[ImageInput] | None = None,
        labels: ImageInput | None = None,
        feather: float | None = None,
        alpha: float = 1.0,
        preserve_color: bool = False,
        max_side: int | None = None,
        format: str = "png",
        style_fit: str | None = None,
    ) -> AsyncJob:
        """Submit a transfer of any ``mode`` (stylize, interpolate, multistyle) as a job (``POST /v1/jobs``), for
        outputs beyond the sync endpoints' ``max_side``; bad input raises here. ``styles``: one image or a list."""
        options = _options(alpha, preserve_color, max_side, format, None, style_fit)
        prepared = self._core.job(
            mode, content, _styles(styles), weights=weights, masks=masks, labels=labels, feather=feather, **options
        )
        return AsyncJob(self, self._core.job_status(await self._send(prepared)), format)

    async def submit_video(
        self,
        video: VideoInput,
        styles: StyleInput | Sequence[StyleInput],
        *,
        weights: Sequence[float] | None = None,
        alpha: float = 1.0,
        preserve_color: bool = False,
        max_side: int | None = None,
        style_fit: str | None = None,
        smoothing: float | None = None,
    ) -> AsyncVideoJob:
        """:meth:`Client.submit_video` (``await job.wait()``, ``await job.result()``)."""
        prepared = self._core.video_job(
            video, _styles(styles), weights=weights, alpha=alpha, preserve_color=preserve_color, max_side=max_side,
            style_fit=style_fit, smoothing=smoothing,
        )  # fmt: skip
        return AsyncVideoJob(self, self._core.job_status(await self._send(prepared)))

    async def job(self, job_id: str, format: str = "png") -> AsyncJob:
        status = self._core.job_status(await self._send(self._core.get(f"/v1/jobs/{job_id}")))
        return AsyncVideoJob(self, status) if status.kind == "video" else AsyncJob(self, status, format)

    async def info(self) -> dict[str, Any]:
        return self._core.json(await self._send(self._core.get("/v1/info")))

    async def styles(self) -> list[dict[str, Any]]:
        return list(self._core.json(await self._send(self._core.get("/v1/styles")))["styles"])

    async def health(self) -> Health:
        try:
            live = await self._http.get("/health/live")
            ready = await self._http.get("/health/ready")
        except httpx.TransportError as exc:
            raise _transport_error(exc, self.base_url) from exc
        return self._core.health(live, ready)


# ---------------------------------------------------------------------------------------------- jobs
class Job:
    """A job on the server (:meth:`Client.submit`): poll its :meth:`status`, :meth:`wait` for it, fetch its
    :meth:`result`, :meth:`cancel` it. ``last`` is the status seen most recently."""

    def __init__(self, client: Client, status: JobStatus, format: str = "png") -> None:
        self._client = client
        self.id = status.id
        self.path = f"/v1/jobs/{status.id}"
        self.format = format
        self.last = status

    def status(self) -> JobStatus:
        client = self._client
        self.last = client._core.job_status(client._send(client._core.get(self.path)))
        return self.last

    def wait(
        self,
        timeout: float | None = None,
        on_progress: Callable[[JobStatus], None] | None = None,
        poll_s: float = 0.5,
    ) -> JobStatus:
        """Poll until the job ends; ``on_progress(status)`` is called once per change of progress (done,
        total), the last with the end status (see ``_Watch.see``).
        Returns the done status; raises JobFailed / JobCancelled / JobExpired, or RequestTimeout after ``timeout``
        seconds (the job keeps running: wait again, or cancel it)."""
        watch = _Watch(self.id, timeout, on_progress, poll_s)
        while not watch.see(self.status()):
            time.sleep(watch.delay())
        return self._client._core.settle(self.last)

    def result(self) -> StylizedImage:
        """The image (JobNotDone while the job is not done, JobExpired once the result is gone)."""
        client = self._client
        return client._core.image(client._send(client._core.get(self.path + "/result")), self.format)

    def cancel(self) -> JobStatus:
        """Cancel: a queued job never runs, a running one stops at its next tile step, a done one's result is
        deleted."""
        client = self._client
        self.last = client._core.job_status(client._send(client._core.delete(self.path)))
        return self.last


class AsyncJob:
    """:class:`Job` of an :class:`AsyncClient` (``await job.wait()``)."""

    def __init__(self, client: AsyncClient, status: JobStatus, format: str = "png") -> None:
        self._client = client
        self.id = status.id
        self.path = f"/v1/jobs/{status.id}"
        self.format = format
        self.last = status

    async def status(self) -> JobStatus:
        client = self._client
        self.last = client._core.job_status(await client._send(client._core.get(self.path)))
        return self.last

    async def wait(
        self,
        timeout: float | None = None,
        on_progress: Callable[[JobStatus], None] | None = None,
        poll_s: float = 0.5,
    ) -> JobStatus:
        watch = _Watch(self.id, timeout, on_progress, poll_s)
        while not watch.see(await self.status()):
            await asyncio.sleep(watch.delay())
        return self._client._core.settle(self.last)

    async def result(self) -> StylizedImage:
        client = self._client
        return client._core.image(await client._send(client._core.get(self.path + "/result")), self.format)

    async def cancel(self) -> JobStatus:
        client = self._client
        self.last = client._core.job_status(await client._send(client._core.delete(self.path)))
        return self.last


class VideoJob(Job):
    """A video's job (:meth:`Client.submit_video`): a :class:`Job` whose progress counts frames
    (``status().unit == "frames"``) and whose :meth:`result` is the mp4; ``wait`` returns the done status, whose
    ``result`` holds ``frames``, ``fps``, ``frame_rate``, ``audio``, ``smoothing``, ``width``, ``height``."""

    def __init__(self, client: Client, status: JobStatus) -> None:
        super().__init__(client, status, VIDEO_FORMAT)

    def result(self) -> StylizedVideo:  # type: ignore[override]
        """The mp4 (JobNotDone while the job is not done, JobExpired once the result is gone)."""
        client = self._client
        return client._core.video(client._send(client._core.get(self.path + "/result")), self.last)


class AsyncVideoJob(AsyncJob):
    """:class:`VideoJob` of an :class:`AsyncClient` (``await job.wait()``, ``await job.result()``)."""

    def __init__(self, client: AsyncClient, status: JobStatus) -> None:
        super().__init__(client, status, VIDEO_FORMAT)

    async def result(self) -> StylizedVideo:  # type: ignore[override]
        client = self._client
        return client._core.video(await client._send(client._core.get(self.path + "/result")), self.last)


__all__ = [
    "AsyncClient",
    "AsyncJob",
    "AsyncVideoJob",
    "BadRequest",
    "Client",
    "ConnectionFailed",
    "DeadlineExceeded",
    "Health",
    "InsufficientMemory",
    "InvalidParameter",
    "Job",
    "JobCancelled",
    "JobExpired",
    "JobFailed",
    "JobNotDone",
    "JobStatus",
    "NotFound",
    "PayloadTooLarge",
    "Preset",
    "QueueFull",
    "RequestTimeout",
    "ServerError",
    "ServiceUnavailable",
    "StyA2KError",
    "StylizedImage",
    "StylizedVideo",
    "Unauthorized",
    "UnsupportedMediaType",
    "VideoJob",
]
