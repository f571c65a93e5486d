"""The FastAPI application: routes, the gateway middleware (request id, auth, body limit, metrics, access
log) and the lifespan that loads the model once, warms it up and drains the batcher at shutdown."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic.json_schema import models_json_schema
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import apidocs, imaging, pipeline
from service.batcher import Batcher, BatchResult, ModelThread
from service.connections import OVERFLOW_STATE_KEY
from service.engine import Engine, TransferJob
from service.engine import process_uptime_s as _process_uptime_s
from service.errors import (
    BodyTooLarge,
    ClientDisconnected,
    InvalidImage,
    InvalidParameter,
    NotReady,
    RequestTimeout,
    ServiceError,
    TooManyConnections,
    Unauthorized,
    UnsupportedMediaType,
    error_body,
    install_error_handlers,
)
from service.logs import request_id_var
from service.metrics import ServiceMetrics
from service.schemas import (
    ALPHA_DOC,
    FEATHER_DOC,
    FORMAT_DOC,
    MAX_SIDE_DOC,
    PRESERVE_COLOR_DOC,
    WEIGHTS_DOC,
    ErrorResponse,
    ImageJSONResponse,
    InterpolateJSON,
    JSONLimits,
    JSONRequest,
    MultistyleJSON,
    OutputFormat,
    StylizeJSON,
    decode_base64,
    parse_json_body,
    parse_weights_text,
)
from service.settings import Settings

log = logging.getLogger("service.app")
access_log = logging.getLogger("service.access")

STATIC_DIR = Path(__file__).resolve().parent / "static"
MULTIPART_PATHS = frozenset({"/v1/stylize", "/v1/interpolate", "/v1/multistyle"})
JSON_PATHS = frozenset(p + "/json" for p in MULTIPART_PATHS)
TRANSFER_PATHS = MULTIPART_PATHS | JSON_PATHS
KNOWN_PATHS = TRANSFER_PATHS | {
    "/",
    "/health/live",
    "/health/ready",
    "/metrics",
    "/v1/info",
    "/docs",
    "/openapi.json",
}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
PROBE_PATHS = frozenset({"/health/live", "/health/ready", "/metrics"})  # served on the connections' probe slots
BODY_STATE_KEY = "stya2k_body"  # scope["state"]: the body the gateway buffered
# On every response: no MIME sniffing of the API's bytes, no framing of the pages (clickjacking).
SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"))
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
T = TypeVar("T")


@dataclass
class ServiceState:
    """Everything the routes share; one per app (no module globals)."""

    settings: Settings
    metrics: ServiceMetrics
    engine: Engine
    io_pool: ThreadPoolExecutor
    decode_budget: imaging.DecodeBudget
    batcher: Batcher[TransferJob, Any] | None = None
    model_thread: ModelThread | None = None
    ready: bool = False
    draining: bool = False
    load_error: str | None = None
    on_fatal: Callable[[str], None] | None = None  # set by server.py: exit when the model cannot load
    background: set[asyncio.Task[Any]] = field(default_factory=set)

    def begin_drain(self) -> None:
        self.draining = True
        self.metrics.ready.set(0)
        log.info("draining: readiness is now 503; still serving")


# ---------------------------------------------------------------------------------------------- gateway
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
        endpoint = path if path in KNOWN_PATHS else "other"
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
            if status["code"] == 500:
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
            if path not in ("/health/live", "/health/ready", "/metrics"):
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
            supplied = headers.get("x-api-key", "")
            if not hmac.compare_digest(supplied.encode(), settings.api_key.encode()):
                return Unauthorized("missing or wrong X-API-Key header")
        if scope["method"] == "POST" and path in TRANSFER_PATHS:
            content_type = headers.get("content-type", "").split(";")[0].strip().lower()
            wanted = "application/json" if path in JSON_PATHS else "multipart/form-data"
            if content_type != wanted:
                return UnsupportedMediaType(
                    f"Content-Type {content_type or '(none)'!r} is not accepted here; send {wanted}"
                )
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > settings.max_body_bytes:
            return BodyTooLarge(
                f"request body of {length} bytes exceeds the limit of {settings.max_body_bytes}"
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
                return BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
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


# ---------------------------------------------------------------------------------------------- lifespan
def _make_lifespan(state: ServiceState) -> Callable[[FastAPI], Any]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Loading happens in the background so /health/live answers at once and /health/ready says 503
        # until the weights are loaded and warm; the port is open the whole time.
        task = asyncio.get_running_loop().create_task(_start_model(state), name="stya2k-load")
        state.background.add(task)
        task.add_done_callback(state.background.discard)
        try:
            yield
        finally:
            state.ready = False
            state.draining = True
            task.cancel()
            if state.batcher is not None:
                await state.batcher.close(state.settings.drain_timeout_s)
            if state.model_thread is not None:
                state.model_thread.stop()
            state.io_pool.shutdown(wait=False, cancel_futures=True)

    return lifespan


async def _start_model(state: ServiceState) -> None:
    settings = state.settings
    thread = ModelThread()
    state.model_thread = thread
    try:
        await thread.call(state.engine.load)
        if settings.warmup:
            await thread.call(state.engine.warm_up)
    except Exception as exc:
        state.load_error = f"{type(exc).__name__}: {exc}"
        log.exception("the model could not be loaded; the service stays not ready")
        if state.on_fatal is not None:
            state.on_fatal(state.load_error)
        return
    state.batcher = Batcher(
        state.engine.run_batch,
        max_batch_size=state.engine.max_batch_size,  # STYA2K_MAX_BATCH_SIZE=0 (auto) resolved per device
        max_wait_ms=settings.max_wait_ms,
        queue_size=settings.queue_size,
        metrics=state.metrics,
        failure_mapper=state.engine.failure,
        model_thread=thread,
    )
    state.batcher.start()
    state.metrics.model_info.info(
        {k: str(v) for k, v in {**public_model_info(state.engine), "device": str(state.engine.device)}.items()}
    )
    state.ready = True
    state.metrics.ready.set(1)
    state.engine.startup["ready_since_process_start_s"] = _uptime()
    log.info(
        "ready",
        extra={"device": str(state.engine.device), "dtype": state.engine.dtype_name, **state.engine.startup},
    )


def public_model_info(engine: Engine) -> dict[str, Any]:
    """The engine's model info with the weights' file name only: the server's paths are nobody's business."""
    info = dict(engine.info())
    if info.get("weights"):
        info["weights"] = Path(str(info["weights"])).name
    return info


def _uptime() -> float | None:
    uptime = _process_uptime_s()
    return None if uptime is None else round(uptime, 3)


# ---------------------------------------------------------------------------------------------- transfer
@dataclass(frozen=True)
class Output:
    body: bytes
    fmt: str
    width: int
    height: int
    request_id: str
    queue_ms: float
    compute_ms: float
    total_ms: float
    batch_id: int
    batch_size: int

    def headers(self) -> dict[str, str]:
        return {
            "X-Request-ID": self.request_id,
            "X-Queue-Ms": f"{self.queue_ms:.1f}",
            "X-Compute-Ms": f"{self.compute_ms:.1f}",
            "X-Total-Ms": f"{self.total_ms:.1f}",
            "X-Batch-Id": str(self.batch_id),
            "X-Batch-Size": str(self.batch_size),
            # What came back: outputs are never upscaled, so max_side above the content's own size is not met.
            "X-Output-Size": f"{self.width}x{self.height}",
            "Server-Timing": (
                f"queue;dur={self.queue_ms:.1f}, compute;dur={self.compute_ms:.1f}, "
                f"total;dur={self.total_ms:.1f}"
            ),
        }


def _deadline(request: Request, settings: Settings) -> float:
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


async def _in_pool(state: ServiceState, fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(state.io_pool, fn, *args)


def _prepare_guarded(request: pipeline.TransferRequest, state: ServiceState) -> TransferJob:
    try:
        return pipeline.prepare(request, state.settings, state.engine.lookup_style, state.decode_budget)
    except ServiceError:
        raise
    except MemoryError:
        raise InvalidImage("the image could not be decoded within the server's memory") from None
    except Exception as exc:  # a decoder bug on odd input is still bad input, never a 500
        log.warning("decoding failed unexpectedly", exc_info=exc)
        raise InvalidImage(f"the image could not be decoded ({type(exc).__name__}: {exc})") from None


async def _wait_unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` but give up (cancelling it: a queued job is dropped) if the client disconnects."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    raise ClientDisconnected("client disconnected while the request was queued")


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def run_transfer(request: Request, transfer: pipeline.TransferRequest) -> Output:
    state: ServiceState = request.app.state.service
    settings = state.settings
    if not state.ready or state.batcher is None:
        raise NotReady("the model is still loading; retry shortly", retry_after_s=1)
    pipeline.validate(transfer, settings)
    deadline = _deadline(request, settings)
    decode_started = time.monotonic()
    job = await _in_pool(state, _prepare_guarded, transfer, state)
    state.metrics.decode_time.observe(time.monotonic() - decode_started)
    key = state.engine.batch_key(job)
    result: BatchResult[Any] = await _wait_unless_disconnected(
        request, state.batcher.submit(key, job, deadline=deadline)
    )
    encode_started = time.monotonic()
    body = await _in_pool(state, pipeline.encode, result.value, transfer.format)
    state.metrics.encode_time.observe(time.monotonic() - encode_started)
    return Output(
        body=body,
        fmt=transfer.format,
        width=job.width,
        height=job.height,
        request_id=request.state.request_id,
        queue_ms=result.queue_s * 1000,
        compute_ms=result.compute_s * 1000,
        total_ms=(time.monotonic() - request.state.started) * 1000,
        batch_id=result.batch_id,
        batch_size=result.batch_size,
    )


def _image_response(output: Output) -> Response:
    return Response(output.body, media_type=imaging.OUTPUT_FORMATS[output.fmt], headers=output.headers())


def _json_response(output: Output) -> JSONResponse:
    payload = ImageJSONResponse(
        image=base64.b64encode(output.body).decode("ascii"),
        format=OutputFormat(output.fmt),
        width=output.width,
        height=output.height,
        request_id=output.request_id,
        timing={
            "queue_ms": round(output.queue_ms, 1),
            "compute_ms": round(output.compute_ms, 1),
            "total_ms": round(output.total_ms, 1),
        },
    )
    return JSONResponse(payload.model_dump(mode="json"), headers=output.headers())


async def _read(upload: UploadFile) -> bytes:
    return await upload.read()


# What each text field allows, for the messages of the strict form checks below.
FORM_ALLOWED = {
    "alpha": "a number 0..1",
    "preserve_color": "true or false",
    "max_side": "an integer 64..STYA2K_MAX_SIDE",
    "format": "png, jpeg or webp",
    "feather": "a number 0..64",
    "weights": "comma-separated numbers, one per style",
}
_INTEGER = re.compile(r"\s*\d+\s*")


async def _check_form(request: Request, repeatable: frozenset[str] = frozenset()) -> None:
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


# ---------------------------------------------------------------------------------------------- app
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
        "content": {mime: {} for mime in imaging.OUTPUT_FORMATS.values()},
        "description": "The stylized image, with X-Output-Size (WxH; never upscaled), X-Queue-Ms, X-Compute-Ms, "
        "X-Total-Ms, Server-Timing headers",
    },
    **ERROR_RESPONSES,
}

ContentFile = Annotated[UploadFile, File(description="Content photo (PNG, JPEG, WebP, BMP, TIFF, GIF)")]
StyleFiles = Annotated[
    list[UploadFile], File(description="Style images, 2..STYA2K_MAX_STYLES (repeat the field)")
]
AlphaForm = Annotated[float, Form(ge=0.0, le=1.0, allow_inf_nan=False, description=ALPHA_DOC)]
PreserveForm = Annotated[bool, Form(description=PRESERVE_COLOR_DOC)]
MaxSideForm = Annotated[int | None, Form(ge=64, description=MAX_SIDE_DOC)]
FormatForm = Annotated[OutputFormat, Form(description=FORMAT_DOC)]


def create_app(settings: Settings) -> FastAPI:
    metrics = ServiceMetrics()
    state = ServiceState(
        settings=settings,
        metrics=metrics,
        engine=Engine(settings, metrics),
        io_pool=ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="stya2k-io"),
        decode_budget=imaging.DecodeBudget(settings.decode_budget_bytes),
    )
    app = FastAPI(
        title="StyA2K Serve",
        version="1",
        description="Arbitrary style transfer with All-to-Key attention (StyA2K, ICCV 2023).",
        lifespan=_make_lifespan(state),
        # Starlette's slash redirect builds its Location from the Host header (an open redirect behind a
        # proxy); a 404 that names the right path serves a client as well.
        redirect_slashes=False,
        docs_url=None,  # /docs is added by apidocs.install with its assets served locally (works offline)
        redoc_url=None,  # ReDoc would load its script from a CDN
    )
    app.state.service = state
    install_error_handlers(app)
    app.add_middleware(Gateway, state=state)
    _add_operational_routes(app, state)
    apidocs.install(app, app.title)
    _add_transfer_routes(app)
    _add_json_schemas(app)
    return app


def _add_operational_routes(app: FastAPI, state: ServiceState) -> None:
    @app.get("/health/live", tags=["operations"])
    async def live() -> dict[str, str]:
        return {"status": "live"}

    @app.get("/health/ready", tags=["operations"], responses={503: {"model": ErrorResponse}})
    async def ready() -> JSONResponse:
        if state.draining:
            return JSONResponse(error_body("draining", "the server is shutting down"), status_code=503)
        if not state.ready:
            message = f"model failed to load: {state.load_error}" if state.load_error else "model is loading"
            return JSONResponse(error_body("not_ready", message), status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def metrics_text() -> Response:
        if state.batcher is not None:
            state.metrics.queue_depth.set(state.batcher.depth)
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/info", tags=["operations"])
    async def info() -> dict[str, Any]:
        settings = state.settings
        return {
            "model": public_model_info(state.engine),
            "device": str(state.engine.device),
            "dtype": state.engine.dtype_name,
            "ready": state.ready,
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
                "max_styles": settings.max_styles,
                "deadline_ms": settings.deadline_ms,
            },
            "cache": {
                "bytes": state.engine.cache.nbytes,
                "max_bytes": settings.cache_bytes,
                "entries": len(state.engine.cache),
            },
        }

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        page = STATIC_DIR / "index.html"
        if page.is_file():
            html = page.read_text(encoding="utf-8")
            return HTMLResponse(html, headers=page_security_headers(html))
        return HTMLResponse(
            "<!doctype html><title>StyA2K Serve</title><h1>StyA2K Serve</h1>"
            "<p>The demo page is not installed. See <a href='/docs'>/docs</a> for the API.</p>"
        )


def page_security_headers(html: str) -> dict[str, str]:
    """Content-Security-Policy for the demo page: its own inline scripts (by hash) and same-origin calls only."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(html)
    )
    policy = (
        f"default-src 'none'; script-src {hashes or chr(39) + 'none' + chr(39)}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return {"Content-Security-Policy": policy, "Referrer-Policy": "no-referrer"}


def _add_transfer_routes(app: FastAPI) -> None:
    @app.post("/v1/stylize", response_class=Response, responses=IMAGE_RESPONSE, tags=["transfer"])
    async def stylize(
        request: Request,
        content: ContentFile,
        style: Annotated[UploadFile, File(description="Style image")],
        alpha: AlphaForm = 1.0,
        preserve_color: PreserveForm = False,
        max_side: MaxSideForm = None,
        format: FormatForm = OutputFormat.png,
    ) -> Response:
        """Stylize `content` with one `style`."""
        await _check_form(request)
        transfer = pipeline.TransferRequest(
            "stylize",
            await _read(content),
            [await _read(style)],
            alpha,
            preserve_color,
            max_side,
            format.value,
        )
        return _image_response(await run_transfer(request, transfer))

    @app.post("/v1/interpolate", response_class=Response, responses=IMAGE_RESPONSE, tags=["transfer"])
    async def interpolate(
        request: Request,
        content: ContentFile,
        style: StyleFiles,
        weights: Annotated[str, Form(description=WEIGHTS_DOC + " Comma-separated, e.g. 0.7,0.3")],
        alpha: AlphaForm = 1.0,
        preserve_color: PreserveForm = False,
        max_side: MaxSideForm = None,
        format: FormatForm = OutputFormat.png,
    ) -> Response:
        """Convex combination of the transferred features of 2..N styles (paper section 4.4)."""
        await _check_form(request, frozenset({"style"}))
        transfer = pipeline.TransferRequest(
            "interpolate",
            await _read(content),
            [await _read(s) for s in style],
            alpha,
            preserve_color,
            max_side,
            format.value,
            weights=parse_weights_text(weights, request.app.state.service.settings.max_styles),
        )
        return _image_response(await run_transfer(request, transfer))

    @app.post("/v1/multistyle", response_class=Response, responses=IMAGE_RESPONSE, tags=["transfer"])
    async def multistyle(
        request: Request,
        content: ContentFile,
        style: StyleFiles,
        mask: Annotated[
            list[UploadFile] | None, File(description="One grayscale mask per style (white = region)")
        ] = None,
        labels: Annotated[UploadFile | None, File(description="Label map: pixel value i -> style i")] = None,
        feather: Annotated[float, Form(ge=0.0, le=64.0, allow_inf_nan=False, description=FEATHER_DOC)] = 8.0,
        alpha: AlphaForm = 1.0,
        preserve_color: PreserveForm = False,
        max_side: MaxSideForm = None,
        format: FormatForm = OutputFormat.png,
    ) -> Response:
        """Each region (masks or a label map) rendered in its own style, blended softly at the borders."""
        await _check_form(request, frozenset({"style", "mask"}))
        transfer = pipeline.TransferRequest(
            "multistyle",
            await _read(content),
            [await _read(s) for s in style],
            alpha,
            preserve_color,
            max_side,
            format.value,
            masks=[await _read(m) for m in mask] if mask else None,
            labels=await _read(labels) if labels is not None else None,
            feather=feather,
        )
        return _image_response(await run_transfer(request, transfer))

    @app.post(
        "/v1/stylize/json",
        responses={200: {"model": ImageJSONResponse}, **ERROR_RESPONSES},
        tags=["json"],
        openapi_extra=_json_body_doc(StylizeJSON),
    )
    async def stylize_json(request: Request) -> JSONResponse:
        """`/v1/stylize` with base64 images in a JSON body."""
        return _json_response(await run_transfer(request, await _json_transfer(request, StylizeJSON)))

    @app.post(
        "/v1/interpolate/json",
        responses={200: {"model": ImageJSONResponse}, **ERROR_RESPONSES},
        tags=["json"],
        openapi_extra=_json_body_doc(InterpolateJSON),
    )
    async def interpolate_json(request: Request) -> JSONResponse:
        """`/v1/interpolate` with base64 images in a JSON body."""
        return _json_response(await run_transfer(request, await _json_transfer(request, InterpolateJSON)))

    @app.post(
        "/v1/multistyle/json",
        responses={200: {"model": ImageJSONResponse}, **ERROR_RESPONSES},
        tags=["json"],
        openapi_extra=_json_body_doc(MultistyleJSON),
    )
    async def multistyle_json(request: Request) -> JSONResponse:
        """`/v1/multistyle` with base64 images in a JSON body."""
        return _json_response(await run_transfer(request, await _json_transfer(request, MultistyleJSON)))


# ---------------------------------------------------------------------------------------------- JSON bodies
JSON_MODELS: tuple[type[JSONRequest], ...] = (StylizeJSON, InterpolateJSON, MultistyleJSON)


def _json_body_doc(model: type[JSONRequest]) -> dict[str, Any]:
    """OpenAPI request body of a JSON route (the body is parsed by hand, off the event loop)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _add_json_schemas(app: FastAPI) -> None:
    """Put the JSON request models into the OpenAPI components the routes' ``$ref``s point at."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        _, definitions = models_json_schema(
            [(m, "validation") for m in JSON_MODELS], ref_template="#/components/schemas/{model}"
        )
        schema.setdefault("components", {}).setdefault("schemas", {}).update(definitions.get("$defs", {}))
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


async def _json_transfer(request: Request, model: type[JSONRequest]) -> pipeline.TransferRequest:
    """Read the body on the loop (cheap), check, parse, validate and base64-decode it in a worker thread."""
    state: ServiceState = request.app.state.service
    body = request.scope["state"].get(BODY_STATE_KEY)  # buffered by the gateway: no second 20 MB join
    if not isinstance(body, bytes):
        body = await request.body()
    return await _in_pool(state, _parse_json_transfer, body, model, state.settings)


def _parse_json_transfer(body: bytes, model: type[JSONRequest], settings: Settings) -> pipeline.TransferRequest:
    parsed, raw = parse_json_body(body, model, JSONLimits(settings.max_json_items, settings.max_json_depth))

    def decode(value: str, field: str) -> bytes:
        return decode_base64(raw.get(value, value), field)

    common: dict[str, Any] = {
        "content": decode(parsed.content, "content"),
        "alpha": parsed.alpha,
        "preserve_color": parsed.preserve_color,
        "max_side": parsed.max_side,
        "format": parsed.format.value,
    }
    if isinstance(parsed, StylizeJSON):
        return pipeline.TransferRequest("stylize", styles=[decode(parsed.style, "style")], **common)
    assert isinstance(parsed, InterpolateJSON | MultistyleJSON)
    styles = [decode(s, f"style[{i}]") for i, s in enumerate(parsed.style)]
    if isinstance(parsed, InterpolateJSON):
        return pipeline.TransferRequest("interpolate", styles=styles, weights=list(parsed.weights), **common)
    return pipeline.TransferRequest(
        "multistyle",
        styles=styles,
        masks=[decode(m, f"masks[{i}]") for i, m in enumerate(parsed.masks)] if parsed.masks else None,
        labels=decode(parsed.labels, "labels") if parsed.labels is not None else None,
        feather=parsed.feather,
        **common,
    )
