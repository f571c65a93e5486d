"""GET /docs: the Swagger UI with its assets served by this server, so the page works without internet.

The assets (Swagger UI 5's ``swagger-ui-bundle.js`` and ``swagger-ui.css``, Apache-2.0) come from the pinned
``fastapi-offline`` package (MIT), which ships them as package data; only its files are used, not its FastAPI
subclass. That beats vendoring 1.7 MB of minified JavaScript into this repository: pip pins and verifies it.
"""

from __future__ import annotations

import importlib.resources
import logging
from functools import cache

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

log = logging.getLogger("service.apidocs")

ASSET_PACKAGE = "fastapi_offline"
ASSET_PREFIX = "/docs/assets/"
ASSETS = {
    "swagger-ui-bundle.js": "application/javascript",
    "swagger-ui.css": "text/css",
    "favicon.png": "image/png",
}


@cache
def asset(name: str) -> bytes | None:
    """An asset's bytes (read once), None when the package is missing."""
    try:
        return (importlib.resources.files(ASSET_PACKAGE) / "static" / name).read_bytes()
    except (ModuleNotFoundError, FileNotFoundError, OSError) as exc:
        log.warning("Swagger UI asset %s unavailable (%s); reinstall the service's dependencies", name, exc)
        return None


def install(app: FastAPI, title: str) -> None:
    """Add /docs and its assets; the FastAPI app must be created with ``docs_url=None``."""

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{title} - API",
            swagger_js_url=ASSET_PREFIX + "swagger-ui-bundle.js",
            swagger_css_url=ASSET_PREFIX + "swagger-ui.css",
            swagger_favicon_url=ASSET_PREFIX + "favicon.png",
        )

    for name, media_type in ASSETS.items():
        _add_asset_route(app, name, media_type)


def _add_asset_route(app: FastAPI, name: str, media_type: str) -> None:
    async def serve_asset() -> Response:
        data = asset(name)
        if data is None:
            return Response(f"{name} is not installed (package {ASSET_PACKAGE})", status_code=404)
        return Response(data, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})

    app.add_api_route(ASSET_PREFIX + name, serve_asset, methods=["GET"], include_in_schema=False)
