"""The outermost ASGI middleware: request id, auth, content type, body limit, metrics and access log.

Every request passes here first: what can be refused without parsing (a full connection table, a missing
key, a wrong content type, a too-large or stalled body) is refused here, before FastAPI sees it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
import uuid

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.state import BODY_STATE_KEY, ServiceState
from service.connections import OVERFLOW_STATE_KEY
from service.contract import Mode
from service.errors import (
    BodyTooLarge,
    ClientDisconnected,
    RequestTimeout,
    ServiceError,
    TooManyConnections,
    Unauthorized,
    UnsupportedMediaType,
    byte_size,
    error_body,
)
from service.jobs import JOBS_PATH  # POST (multipart); the job paths below carry an id
from service.logs import request_id_var

log = logging.getLogger("service.app")
access_log = logging.getLogger("service.access")

MULTIPART_PATHS = frozenset(f"/v1/{mode}" for mode in Mode)
JSON_PATHS = frozenset(p + "/json" for p in MULTIPART_PATHS)
TRANSFER_PATHS = MULTIPART_PATHS | JSON_PATHS
KNOWN_PATHS = TRANSFER_PATHS | {
    "/",
    "/health/live",
    "/health/ready",
    "/metrics",
    "/v1/info",
    JOBS_PATH,
    "/docs",
    "/openapi.json",
}
# Job paths have an id in them: metrics label them by template, so the label set stays bounded.
_JOB_PATH_TEMPLATES = (
    (re.compile(r"^/v1/jobs/[^/]+$"), "/v1/jobs/{id}"),
    (re.compile(r"^/v1/jobs/[^/]+/result$"), "/v1/jobs/{id}/result"),
)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
PROBE_PATHS = frozenset({"/health/live", "/health/ready", "/metrics"})  # served on the connections' probe slots
# On every response: no MIME sniffing of the API's bytes, no framing of the pages (clickjacking).
SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"))


def endpoint_label(path: str) -> str:
    """The metrics' endpoint label: the path when it is known, its template for job paths, else "other"."""
    if path in KNOWN_PATHS:
        return path
    for pattern, template in _JOB_PATH_TEMPLATES:
        if pattern.match(path):
            return template
    return "other"


class Gateway:
    """Outermost ASGI middleware: request id, auth, content type, body limit, metrics and access log.

    The body is read (bounded) here, before any parsing, so an oversized upload is refused with 413 without
    spooling it, and handlers receive a fully buffered body.
    """

    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        path: str = scope["path"]
        endpoint = endpoint_label(path)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        supplied = headers.get("x-request-id", "")
        request_id = supplied if _REQUEST_ID.match(supplied) else uuid.uuid4().hex
        scope.setdefault("state", {})
        scope["state"].update(request_id=request_id, started=started)
        token = request_id_var.set(request_id)
        status = {"code": 500}
        is_transfer = path in TRANSFER_PATHS
        metrics = self.state.metrics

        overflow = bool(scope["state"].get(OVERFLOW_STATE_KEY))
        # The response start waits for the first body part, and the two leave in one write (CoalescedWrites in
        # connections.py): a proxy in front can retry a request whose replica dies before answering, never one
        # whose header it has already forwarded. A handler that fails before its body still gets a clean 500.
        held_start: list[Message] = []

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                response_headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in response_headers}
                if b"x-request-id" not in present:
                    response_headers.append((b"x-request-id", request_id.encode()))
                response_headers.extend(h for h in SECURITY_HEADERS if h[0] not in present)
                if overflow and b"connection" not in present:
                    response_headers.append((b"connection", b"close"))  # a probe slot serves one request
                message["headers"] = response_headers
                held_start[:] = [message]
                return
            if held_start:
                await send(held_start.pop())
            await send(message)

        if is_transfer:
            metrics.in_flight.inc()
        try:
            rejection = self._precheck(scope, headers, path)
            if rejection is not None:
                await self._reject(scope, rejection, send_with_id, request_id)
                return
            body_receive = await self._buffer_body(scope, headers, receive)
            if isinstance(body_receive, ServiceError):
                await self._reject(scope, body_receive, send_with_id, request_id)
                return
            await self.app(scope, body_receive, send_with_id)
        except Exception:
            log.exception("unhandled error in the app")
            if held_start or status["code"] == 500:  # nothing was sent yet: the client gets a 500, not a torn reply
                held_start.clear()
                status["code"] = 500
                await self._reject_internal(send_with_id)
        finally:
            elapsed = time.monotonic() - started
            if is_transfer:
                metrics.in_flight.dec()
                if 200 <= status["code"] < 300:
                    metrics.request_latency.labels(endpoint=endpoint).observe(elapsed)
            metrics.requests.labels(endpoint=endpoint, status=str(status["code"])).inc()
            error = scope["state"].get("error")
            if isinstance(error, ServiceError):  # set by the error handlers (errors.py) or by _reject
                metrics.reject(error.reason)
            if path not in PROBE_PATHS:  # probes every few seconds would drown the log
                access_log.info(
                    "%s %s %d %.1fms",
                    scope["method"],
                    path,
                    status["code"],
                    elapsed * 1000,
                    extra={"status": status["code"], "ms": round(elapsed * 1000, 1)},
                )
            request_id_var.reset(token)

    def _precheck(self, scope: Scope, headers: dict[str, str], path: str) -> ServiceError | None:
        settings = self.state.settings
        if scope["state"].get(OVERFLOW_STATE_KEY) and path not in PROBE_PATHS:
            return TooManyConnections(
                f"every one of the server's {settings.max_connections} connections (STYA2K_MAX_CONNECTIONS) has "
                "a request in progress; retry shortly",
                retry_after_s=1,
            )
        guarded = path.startswith("/v1/") or (path == "/metrics" and settings.metrics_require_key)
        if guarded and settings.api_key is not None:
            # `headers` kept the last of repeated names; a second key is refused rather than one of them picked
            # (a proxy that adds its own key, or a client that sends two, must not be authorised by the order).
            keys = sum(1 for name, _ in scope["headers"] if name.lower() == b"x-api-key")
            if keys > 1:
                return Unauthorized(f"X-API-Key was sent {keys} times; send exactly one")
            supplied = headers.get("x-api-key", "")
            if not hmac.compare_digest(supplied.encode(), settings.api_key.encode()):
                return Unauthorized("missing or wrong X-API-Key header")
        if scope["method"] == "POST" and (path in TRANSFER_PATHS or path == JOBS_PATH):
            content_type = headers.get("content-type", "").split(";")[0].strip().lower()
            wanted = "application/json" if path in JSON_PATHS else "multipart/form-data"
            if content_type != wanted:
                return UnsupportedMediaType(
                    f"Content-Type {content_type or '(none)'!r} is not accepted here; send {wanted}"
                )
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > settings.max_body_bytes:
            return BodyTooLarge(
                f"request body of {byte_size(int(length))} exceeds the limit of {byte_size(settings.max_body_bytes)} "
                "(STYA2K_MAX_BODY_BYTES)"
            )
        return None

    async def _buffer_body(
        self, scope: Scope, headers: dict[str, str], receive: Receive
    ) -> Receive | ServiceError:
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return receive
        settings = self.state.settings
        limit = settings.max_body_bytes
        # The whole body must arrive within the request's deadline (later it could only get 504), with no
        # pause longer than body_timeout_s: a client that stalls mid-body no longer holds a connection forever.
        body_deadline = float(scope["state"]["started"]) + settings.deadline_ms / 1000.0
        chunks: list[bytes] = []
        size = 0
        while True:
            wait_s = min(settings.body_timeout_s, body_deadline - time.monotonic())
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, wait_s))
            except TimeoutError:
                self.state.metrics.connection_events.labels(event="body_timeout").inc()
                return RequestTimeout(
                    f"the request body stopped arriving after {size} bytes: the server waits at most "
                    f"{settings.body_timeout_s:g} s between parts (STYA2K_BODY_TIMEOUT_S) and "
                    f"{settings.deadline_ms / 1000:g} s in all"
                )
            if message["type"] == "http.disconnect":
                return ClientDisconnected("client disconnected while sending the body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return BodyTooLarge(f"request body exceeds the limit of {byte_size(limit)} (STYA2K_MAX_BODY_BYTES)")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        scope["state"][BODY_STATE_KEY] = body
        return _replay(body, receive)

    async def _reject(self, scope: Scope, error: ServiceError, send: Send, request_id: str) -> None:
        scope["state"]["error"] = error
        headers = {"X-Request-ID": request_id, **error.headers()}
        if scope["method"] in ("POST", "PUT", "PATCH"):
            # Refused before (all of) the body was read: close rather than wait for the rest of it.
            headers["Connection"] = "close"
        response = JSONResponse(
            error_body(error.code, error.message), status_code=error.status, headers=headers
        )
        await response({"type": "http"}, _no_receive, send)

    async def _reject_internal(self, send: Send) -> None:
        response = JSONResponse(error_body("internal", "internal server error"), status_code=500)
        try:
            await response({"type": "http"}, _no_receive, send)
        except Exception:  # the response had already started: nothing more can be sent
            log.debug("could not send the 500 response")


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


REPLAY_CHUNK = 64 * 1024


def _replay(body: bytes, receive: Receive) -> Receive:
    """Hand the buffered body on in slices, yielding to the event loop between them.

    The multipart parser runs on the event loop; fed 20 MB at once it holds the loop for ~0.25 s, in 64 KiB
    slices each step is about a millisecond and health probes are answered in between.
    """
    view = memoryview(body)
    offset = 0
    done = False

    async def replay() -> Message:
        nonlocal offset, done
        if done:
            return await receive()  # after the body: http.disconnect when the client leaves
        if offset > 0:
            await asyncio.sleep(0)
        chunk = bytes(view[offset : offset + REPLAY_CHUNK])
        offset += len(chunk)
        done = offset >= len(body)
        return {"type": "http.request", "body": chunk, "more_body": not done}

    return replay
