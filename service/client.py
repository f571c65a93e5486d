"""Python client for the StyA2K Serve HTTP API (docs/API.md), synchronous and asynchronous.

    from service.client import Client
    with Client("http://127.0.0.1:8000") as client:
        result = client.stylize("photo.jpg", "painting.jpg", alpha=0.8)
        result.save("out.png")

:class:`Client` (``httpx.Client``) and :class:`AsyncClient` (``httpx.AsyncClient``) share one core that builds
the requests, decides on retries and turns responses into results or typed exceptions; only the sending and
the sleeping differ. Requests answered 429 (queue full) or 503 (not ready, draining, transient out of memory)
are retried up to ``max_retries`` times, waiting what ``Retry-After`` says (capped by ``max_retry_wait_s``)
or an exponential backoff when the header is absent.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeAlias

import httpx

ImageInput: TypeAlias = "bytes | str | os.PathLike[str] | IO[bytes] | Any"
"""An image: file bytes, a path, a binary file object, or a PIL image (sent as PNG)."""

RETRY_STATUSES = frozenset({429, 503})
OUTPUT_FORMATS = ("png", "jpeg", "webp")
_MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


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
    """400: a corrupt image (``invalid_image``) or a malformed request (``bad_request``)."""


class Unauthorized(StyA2KError):
    """401: missing or wrong API key."""


class NotFound(StyA2KError):
    """404 / 405: no such endpoint or method (wrong base URL?)."""


class PayloadTooLarge(StyA2KError):
    """413: the body or an image exceeds the server's limits."""


class UnsupportedMediaType(StyA2KError):
    """415: not an image format the server reads."""


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


_BY_CODE: dict[str, type[StyA2KError]] = {
    "invalid_image": BadRequest,
    "bad_request": BadRequest,
    "unauthorized": Unauthorized,
    "not_found": NotFound,
    "method_not_allowed": NotFound,
    "body_too_large": PayloadTooLarge,
    "image_too_large": PayloadTooLarge,
    "unsupported_media_type": UnsupportedMediaType,
    "invalid_parameter": InvalidParameter,
    "queue_full": QueueFull,
    "not_ready": ServiceUnavailable,
    "draining": ServiceUnavailable,
    "out_of_memory": ServiceUnavailable,
    "deadline_exceeded": DeadlineExceeded,
    "insufficient_memory": InsufficientMemory,
    "internal": ServerError,
}
_BY_STATUS: dict[int, type[StyA2KError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    405: NotFound,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
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

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), read from the image header."""
        from PIL import Image

        with Image.open(io.BytesIO(self.data)) as img:
            return img.size

    def to_pil(self) -> Any:
        from PIL import Image

        img = Image.open(io.BytesIO(self.data))
        img.load()
        return img

    def save(self, path: str | os.PathLike[str]) -> Path:
        target = Path(path)
        target.write_bytes(self.data)
        return target


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
    files: list[tuple[str, tuple[str, bytes, str]]] = field(default_factory=list)
    data: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

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
        styles: Sequence[ImageInput],
        *,
        alpha: float,
        preserve_color: bool,
        max_side: int | None,
        format: str,
        weights: Sequence[float] | None = None,
        masks: Sequence[ImageInput] | None = None,
        labels: ImageInput | None = None,
        feather: float | None = None,
        deadline_ms: float | None = None,
        request_id: str | None = None,
    ) -> PreparedRequest:
        if format not in OUTPUT_FORMATS:
            raise ValueError(f"format {format!r} is not supported; use one of {', '.join(OUTPUT_FORMATS)}")
        files = [("content", ("content", read_image(content, "content"), "application/octet-stream"))]
        for index, style in enumerate(styles):
            files.append(("style", (f"style{index}", read_image(style, f"style[{index}]"), "application/octet-stream")))
        for index, mask in enumerate(masks or ()):
            files.append(("mask", (f"mask{index}", read_image(mask, f"mask[{index}]"), "application/octet-stream")))
        if labels is not None:
            files.append(("labels", ("labels", read_image(labels, "labels"), "application/octet-stream")))
        data = {"alpha": repr(float(alpha)), "preserve_color": "true" if preserve_color else "false", "format": format}
        if max_side is not None:
            data["max_side"] = str(int(max_side))
        if weights is not None:
            data["weights"] = ",".join(repr(float(w)) for w in weights)
        if feather is not None:
            data["feather"] = repr(float(feather))
        return PreparedRequest("POST", f"/v1/{mode}", files, data, self._headers(deadline_ms, request_id))

    def get(self, path: str) -> PreparedRequest:
        return PreparedRequest("GET", path, headers=self._headers(None, None))

    # ---- retries
    def retry_delay(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before retrying ``response`` (attempt 0 = the first try), or None: do not retry."""
        if response.status_code not in RETRY_STATUSES or attempt >= self.max_retries:
            return None
        asked = _retry_after(response)
        delay = asked if asked is not None else self.backoff_s * (2**attempt)
        return min(max(delay, 0.0), self.max_retry_wait_s)

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


# ---------------------------------------------------------------------------------------------- clients
def _options(
    alpha: float, preserve_color: bool, max_side: int | None, format: str, deadline_ms: float | None
) -> dict[str, Any]:
    """The transfer options every transfer method takes."""
    return {
        "alpha": alpha,
        "preserve_color": preserve_color,
        "max_side": max_side,
        "format": format,
        "deadline_ms": deadline_ms,
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
                raise _transport_error(exc, self.base_url) from exc
            delay = self._core.retry_delay(response, attempt)
            if delay is None:
                return response
            time.sleep(delay)
            attempt += 1

    def stylize(
        self,
        content: ImageInput,
        style: ImageInput,
        *,
        alpha: float = 1.0,
        preserve_color: bool = False,
        max_side: int | None = None,
        format: str = "png",
        deadline_ms: float | None = None,
    ) -> StylizedImage:
        """``content`` in the style of ``style``; ``alpha`` in 0..1 is the style strength."""
        options = _options(alpha, preserve_color, max_side, format, deadline_ms)
        prepared = self._core.transfer("stylize", content, [style], **options)
        return self._core.image(self._send(prepared), format)

    def interpolate(
        self,
        content: ImageInput,
        styles: Sequence[ImageInput],
        weights: Sequence[float],
        *,
        alpha: float = 1.0,
        preserve_color: bool = False,
        max_side: int | None = None,
        format: str = "png",
        deadline_ms: float | None = None,
    ) -> StylizedImage:
        """A blend of 2..N styles; ``weights`` (one per style, >= 0) are normalised by the server."""
        options = _options(alpha, preserve_color, max_side, format, deadline_ms)
        prepared = self._core.transfer("interpolate", content, styles, weights=weights, **options)
        return self._core.image(self._send(prepared), format)

    def multistyle(
        self,
        content: ImageInput,
        styles: Sequence[ImageInput],
        *,
        masks: Sequence[ImageInput] | None = None,
        labels: ImageInput | None = None,
        feather: float = 8.0,
        alpha: float = 1.0,
        preserve_color: bool = False,
        max_side: int | None = None,
        format: str = "png",
        deadline_ms: float | None = None,
    ) -> StylizedImage:
        """Each region in its own style: one grayscale mask per style (white = region) or one label map."""
        options = _options(alpha, preserve_color, max_side, format, deadline_ms)
        prepared = self._core.transfer(
            "multistyle", content, styles, masks=masks, labels=labels, feather=feather, **options
        )
        return self._core.image(self._send(prepared), format)

    def info(self) -> dict[str, Any]:
        """``GET /v1/info``: model, device, batching and limits."""
        return self._core.json(self._send(self._core.get("/v1/info")))

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
                raise _transport_error(exc, self.base_url) from exc
            delay = self._core.retry_delay(response, attempt)
            if delay is None:
                return response
            await asyncio.sleep(delay)
            attempt += 1

    async def stylize(
        self,
        content: ImageInput,
        style: ImageInput,
        *,
        alpha: float = 1.0,
        preserve_color: bool = False,
        max_side: int | None = None,
        format: str = "png",
        deadline_ms: float | None = None,
    ) -> StylizedImage:
        options = _options(alpha, preserve_color, max_side, format, deadline_ms)
        prepared = self._core.transfer("stylize", content, [style], **options)
        return self._core.image(await self._send(prepared), format)

    async def interpolate(
        self,
        content: ImageInput,
        styles: Sequence[ImageInput],
        weights: Sequence[float],
        *,
        alpha: float = 1.0,
        preserve_color: bool = False,
        max_side: int | None = None,
        format: str = "png",
        deadline_ms: float | None = None,
    ) -> StylizedImage:
        options = _options(alpha, preserve_color, max_side, format, deadline_ms)
        prepared = self._core.transfer("interpolate", content, styles, weights=weights, **options)
        return self._core.image(await self._send(prepared), format)

    async def multistyle(
        self,
        content: ImageInput,
        styles: Sequence[ImageInput],
        *,
        masks: Sequence[ImageInput] | None = None,
        labels: ImageInput | None = None,
        feather: float = 8.0,
        alpha: float = 1.0,
        preserve_color: bool = False,
        max_side: int | None = None,
        format: str = "png",
        deadline_ms: float | None = None,
    ) -> StylizedImage:
        options = _options(alpha, preserve_color, max_side, format, deadline_ms)
        prepared = self._core.transfer(
            "multistyle", content, styles, masks=masks, labels=labels, feather=feather, **options
        )
        return self._core.image(await self._send(prepared), format)

    async def info(self) -> dict[str, Any]:
        return self._core.json(await self._send(self._core.get("/v1/info")))

    async def health(self) -> Health:
        try:
            live = await self._http.get("/health/live")
            ready = await self._http.get("/health/ready")
        except httpx.TransportError as exc:
            raise _transport_error(exc, self.base_url) from exc
        return self._core.health(live, ready)


__all__ = [
    "AsyncClient",
    "BadRequest",
    "Client",
    "ConnectionFailed",
    "DeadlineExceeded",
    "Health",
    "InsufficientMemory",
    "InvalidParameter",
    "NotFound",
    "PayloadTooLarge",
    "QueueFull",
    "RequestTimeout",
    "ServerError",
    "ServiceUnavailable",
    "StyA2KError",
    "StylizedImage",
    "Unauthorized",
    "UnsupportedMediaType",
]
