"""The FastAPI application, assembled: the gateway middleware, the error handlers, the routers and the lifespan.

Each part has its own module under :mod:`service.api`; this one only puts them together, once per app.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic.json_schema import models_json_schema

from service import apidocs
from service.api import job_routes, operation_routes, style_routes, transfer_routes
from service.api.errors import install_error_handlers
from service.api.gateway import Gateway
from service.api.lifespan import make_lifespan
from service.api.state import ServiceState
from service.settings import Settings

__all__ = ["ServiceState", "create_app"]


def create_app(settings: Settings) -> FastAPI:
    state = ServiceState.create(settings)
    app = FastAPI(
        title="StyA2K Serve",
        version="1",
        description="Arbitrary style transfer with All-to-Key attention (StyA2K, ICCV 2023).",
        lifespan=make_lifespan(state),
        # Starlette's slash redirect builds its Location from the Host header (an open redirect behind a
        # proxy); a 404 that names the right path serves a client as well.
        redirect_slashes=False,
        docs_url=None,  # /docs is added by apidocs.install with its assets served locally (works offline)
        redoc_url=None,  # ReDoc would load its script from a CDN
    )
    app.state.service = state
    install_error_handlers(app)
    app.add_middleware(Gateway, state=state)
    app.include_router(operation_routes.router)
    apidocs.install(app, app.title)
    app.include_router(transfer_routes.router)
    app.include_router(job_routes.router)
    app.include_router(style_routes.router)
    _add_json_schemas(app)
    return app


def _add_json_schemas(app: FastAPI) -> None:
    """Put the JSON request models into the OpenAPI components the routes' ``$ref``s point at."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        _, definitions = models_json_schema(
            [(m, "validation") for m in transfer_routes.JSON_MODELS], ref_template="#/components/schemas/{model}"
        )
        schema.setdefault("components", {}).setdefault("schemas", {}).update(definitions.get("$defs", {}))
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
