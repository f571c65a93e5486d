"""The preset styles: ``GET /v1/styles`` (the list) and each painting's ``/image`` and ``/thumbnail``.

The paintings are the package's own files (:mod:`service.presets`); a transfer names one with ``style_preset``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from service.errors import NotFound
from service.presets import STYLES_PATH, Preset, library
from service.schemas import ErrorResponse

router = APIRouter()
# The files never change while a server runs (they are package data): let browsers keep them for a day.
CACHE_CONTROL = "public, max-age=86400"
FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/jpeg": {}}, "description": "The JPEG"},
    404: {"model": ErrorResponse, "description": "not_found: no preset of that name"},
}


@router.get(STYLES_PATH, tags=["styles"])
async def list_styles() -> dict[str, Any]:
    """The preset styles (public-domain paintings): send a `name` as `style_preset` wherever a style image goes."""
    return {"styles": [preset.describe() for preset in library()]}


def _preset(name: str) -> Preset:
    presets = library()
    if name not in presets.names:
        raise NotFound(f"no preset style {name[:64]!r}; valid names (GET {STYLES_PATH}): {', '.join(presets.names)}")
    return presets.get(name)


@router.get(STYLES_PATH + "/{name}/image", response_class=Response, responses=FILE_RESPONSES, tags=["styles"])
async def style_image(name: str) -> Response:
    """The preset's painting as used for the transfer (JPEG, at most 512 px on the long side)."""
    return Response(library().image(_preset(name).name), media_type="image/jpeg",
                    headers={"Cache-Control": CACHE_CONTROL})  # fmt: skip


@router.get(STYLES_PATH + "/{name}/thumbnail", response_class=Response, responses=FILE_RESPONSES, tags=["styles"])
async def style_thumbnail(name: str) -> Response:
    """A small JPEG of the preset (at most 160 px on the long side)."""
    return Response(
        library().thumbnail(_preset(name).name), media_type="image/jpeg", headers={"Cache-Control": CACHE_CONTROL}
    )
