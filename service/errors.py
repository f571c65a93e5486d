"""Every error the service can answer with: its code, HTTP status, metric reason and message.

Plain Python, so decoding, batching, the engine and the command line raise them without knowing the web
framework; ``service.api.errors`` is the one place turning them (and FastAPI's own errors) into responses.
Each is answered as JSON ``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ServiceError(Exception):
    """Base of every error answered to a client. ``reason`` feeds the rejections metric."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    reason: ClassVar[str | None] = None  # queue_full | deadline | invalid | too_large | oom | None

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after_s)))}


class InvalidImage(ServiceError):
    status, code, reason = 400, "invalid_image", "invalid"


class InvalidVideo(ServiceError):
    """Not a readable video: no video stream, truncated, corrupt."""

    status, code, reason = 400, "invalid_video", "invalid"


class UnsupportedVideo(ServiceError):
    """A readable video this service cannot take: a codec it cannot decode, a variable frame rate."""

    status, code, reason = 415, "unsupported_video", "invalid"


class VideoTooLarge(ServiceError):
    """Over a video limit: bytes, duration, frames or frame size (the STYA2K_VIDEO_* settings)."""

    status, code, reason = 413, "video_too_large", "too_large"


class VideoUnavailable(ServiceError):
    """This installation cannot take videos (PyAV missing: a partial install)."""

    status, code, reason = 501, "video_unavailable", None


class BadRequest(ServiceError):
    status, code, reason = 400, "bad_request", "invalid"


class Unauthorized(ServiceError):
    status, code, reason = 401, "unauthorized", None


class NotFound(ServiceError):
    status, code, reason = 404, "not_found", None


class MethodNotAllowed(ServiceError):
    status, code, reason = 405, "method_not_allowed", None


class BodyTooLarge(ServiceError):
    status, code, reason = 413, "body_too_large", "too_large"


class ImageTooLarge(ServiceError):
    status, code, reason = 413, "image_too_large", "too_large"


class UnsupportedMediaType(ServiceError):
    status, code, reason = 415, "unsupported_media_type", "invalid"


class RequestTimeout(ServiceError):
    """The client stopped sending its request (header or body) for longer than the server waits."""

    status, code, reason = 408, "request_timeout", None


class InvalidParameter(ServiceError):
    status, code, reason = 422, "invalid_parameter", "invalid"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class QueueFull(ServiceError):
    status, code, reason = 429, "queue_full", "queue_full"


class JobNotFound(ServiceError):
    """No job with this id on this replica (never accepted here, or forgotten long after it finished)."""

    status, code, reason = 404, "job_not_found", None


class JobNotDone(ServiceError):
    """The job's result was asked for before the job finished (poll GET /v1/jobs/{id} until done)."""

    status, code, reason = 409, "job_not_done", None


class JobExpired(ServiceError):
    """The job's result is gone: kept past STYA2K_JOB_RESULT_TTL_S, dropped for room, or deleted."""

    status, code, reason = 410, "job_expired", None


class JobQueueFull(ServiceError):
    status, code, reason = 429, "job_queue_full", "queue_full"


class JobTooLarge(ServiceError):
    """The job alone would hold more decoded input than all jobs together may (STYA2K_JOBS_MEMORY_BYTES)."""

    status, code, reason = 413, "job_too_large", "too_large"


class JobTooLong(ServiceError):
    """The job needs more model time than its time limit allows (STYA2K_JOB_TIMEOUT_S): refused at submission
    from the measured rate, or ended as soon as its own pace shows it cannot finish."""

    status, code, reason = 413, "job_too_long", "too_large"


class NotReady(ServiceError):
    status, code, reason = 503, "not_ready", None


class StoreUnavailable(ServiceError):
    """The shared job store (Redis, STYA2K_JOBS_STORE) cannot be reached: the job paths answer 503 until it is back."""

    status, code, reason = 503, "job_store_unavailable", None


class WorkerLost(ServiceError):
    """A job on the shared store whose replica died while running it more often than STYA2K_JOBS_STORE_MAX_ATTEMPTS."""

    status, code, reason = 500, "worker_lost", None


class Draining(ServiceError):
    status, code, reason = 503, "draining", None


class TooManyConnections(ServiceError):
    """Every connection slot is busy with a request; this one was let in for health checks only."""

    status, code, reason = 503, "too_many_connections", None


class OutOfMemory(ServiceError):
    """Transient: the request fits on its own normally, memory was short at that moment."""

    status, code, reason = 503, "out_of_memory", "oom"


class DeadlineExceeded(ServiceError):
    status, code, reason = 504, "deadline_exceeded", "deadline"


class InsufficientMemory(ServiceError):
    """The request does not fit in device memory even alone."""

    status, code, reason = 507, "insufficient_memory", "oom"


class ClientDisconnected(ServiceError):
    """The client went away before compute; nobody reads this answer (499 as in nginx)."""

    status, code, reason = 499, "client_disconnected", None


class Internal(ServiceError):
    status, code, reason = 500, "internal", None


def byte_size(nbytes: int) -> str:
    """A size for a 413 message: exact bytes for a program, MiB for a person ("20971520 bytes (20 MiB)")."""
    return f"{nbytes} bytes ({nbytes / 2**20:.3g} MiB)"


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _field_name(location: tuple[Any, ...] | list[Any]) -> str:
    # ("body", "alpha") -> "alpha"; ("header", "x-deadline-ms") -> "x-deadline-ms"; lists keep their index.
    parts = [str(p) for p in location if p not in ("body", "query", "path", "form", "file")]
    return ".".join(parts) or "body"


# FastAPI / pydantic phrasings that leak Python internals, and what they mean for a client.
_MESSAGE_REWRITES = (
    ("Expected UploadFile", "must be a file part (a form part with a filename), not a text field"),
    ("Input should be a valid dictionary or object", "the body must be a JSON object"),
)


def validation_error(errors: list[Any]) -> ServiceError:
    """The first of FastAPI's / pydantic's validation errors as one of ours (shared by the form and JSON paths)."""
    if not errors:
        return InvalidParameter("body", "invalid request")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return BadRequest(f"request body is not valid JSON: {first.get('msg', '')}".strip())
    field = _field_name(first.get("loc", ()))
    message = str(first.get("msg", "invalid value"))
    for marker, rewrite in _MESSAGE_REWRITES:
        if marker in message:
            message = rewrite
    if "input" in first and first.get("type") != "missing" and isinstance(first["input"], str | int | float):
        message += f" (got {str(first['input'])[:80]!r})"
    more = len(errors) - 1
    if more:
        message += f"; and {more} more problem(s)"
    return InvalidParameter(field, message)
