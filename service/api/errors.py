"""The edge's half of the error handling: every exception a request raises, answered as one JSON shape.

``service.errors`` defines the errors (code, status, reason) without the web framework; here FastAPI's own
404/405/422 and Starlette's 400s are rewritten into the same ``{"error": {"code", "message"}}`` body.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import (
    BadRequest,
    BodyTooLarge,
    Internal,
    MethodNotAllowed,
    NotFound,
    ServiceError,
    Unauthorized,
    UnsupportedMediaType,
    error_body,
    validation_error,
)

log = logging.getLogger("service.errors")


def error_response(error: ServiceError, request_id: str | None = None) -> JSONResponse:
    headers = error.headers()
    if request_id:
        headers["X-Request-ID"] = request_id
    return JSONResponse(error_body(error.code, error.message), status_code=error.status, headers=headers)


def from_validation_error(exc: RequestValidationError) -> ServiceError:
    """The first validation problem, phrased with the field it concerns."""
    return validation_error(list(exc.errors()))


def from_http_exception(exc: StarletteHTTPException) -> ServiceError:
    detail = str(exc.detail) if exc.detail else ""
    by_status: dict[int, type[ServiceError]] = {
        400: BadRequest,
        401: Unauthorized,
        404: NotFound,
        405: MethodNotAllowed,
        413: BodyTooLarge,
        415: UnsupportedMediaType,
    }
    cls = by_status.get(exc.status_code)
    if cls is None:
        error = ServiceError(detail or "error")
        error.status = exc.status_code  # type: ignore[misc]
        return error
    messages = {
        NotFound: "no such endpoint; see GET /docs for the API",
        MethodNotAllowed: "method not allowed on this endpoint; see GET /docs for the API",
    }
    message = messages.get(cls, detail or cls.code)
    return cls(message)


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception type through :func:`error_response` (the single mapping to HTTP)."""

    async def on_service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        request.state.error = exc
        return error_response(exc, _request_id(request))

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        error = from_validation_error(exc)
        request.state.error = error
        return error_response(error, _request_id(request))

    async def on_http_exception(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        error = from_http_exception(exc)
        path = request.url.path
        if isinstance(error, NotFound) and len(path) > 1 and path.endswith("/"):
            error = NotFound(f"no such endpoint; did you mean {path.rstrip('/')!r} (no trailing slash)?")
        request.state.error = error
        response = error_response(error, _request_id(request))
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"request_id": _request_id(request)})
        error = Internal("internal server error; the request id identifies it in the server log")
        request.state.error = error
        return error_response(error, _request_id(request))

    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(Exception, on_unexpected)
