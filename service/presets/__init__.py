"""The preset styles: public-domain paintings shipped with the package (``GET /v1/styles``, ``style_preset=NAME``).

The files beside this module (``<name>.jpg``, ``thumbnails/<name>.jpg``, ``presets.json``, ``PROVENANCE.md``) are
written by ``python -m bench.make_presets``. A preset is resolved to its image bytes where a request is read, so
from there on it is an ordinary style image: the same validation, decoding and style-feature cache (keyed by the
bytes' hash, size and fit) as an uploaded one, and a repeated preset skips the encoder like a repeated upload.
Plain Python and Pillow-free: the command line and the routes read it without loading the model.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from service.errors import InvalidParameter

PRESETS_DIR = Path(__file__).resolve().parent
STYLES_PATH = "/v1/styles"  # the list; /v1/styles/{name}/image and /thumbnail are the files
MAX_NAME_CHARS = 64  # names in messages are cut to this: a client's typo is echoed, a megabyte is not


@dataclass(frozen=True)
class Preset:
    """One preset painting (presets.json)."""

    name: str
    title: str
    artist: str
    year: str
    licence: str
    source: str

    @property
    def image_path(self) -> Path:
        return PRESETS_DIR / f"{self.name}.jpg"

    @property
    def thumbnail_path(self) -> Path:
        return PRESETS_DIR / "thumbnails" / f"{self.name}.jpg"

    def describe(self) -> dict[str, str]:
        """The entry of ``GET /v1/styles``."""
        return {
            "name": self.name,
            "title": self.title,
            "artist": self.artist,
            "year": self.year,
            "licence": self.licence,
            "source": self.source,
            "image": f"{STYLES_PATH}/{self.name}/image",
            "thumbnail": f"{STYLES_PATH}/{self.name}/thumbnail",
        }


class PresetLibrary:
    """The shipped presets by name, their image bytes read once on first use and kept (about 1 MB in all)."""

    def __init__(self, presets: list[Preset]) -> None:
        self._presets = {preset.name: preset for preset in presets}
        self._bytes: dict[Path, bytes] = {}

    @property
    def names(self) -> list[str]:
        return list(self._presets)

    def __iter__(self) -> Iterator[Preset]:
        return iter(self._presets.values())

    def __len__(self) -> int:
        return len(self._presets)

    def get(self, name: str, field: str = "style_preset") -> Preset:
        """The preset called ``name``; 422 ``invalid_parameter`` naming ``field`` and every valid name if none is."""
        preset = self._presets.get(name.strip())
        if preset is None:
            shown = name if len(name) <= MAX_NAME_CHARS else name[:MAX_NAME_CHARS] + "..."
            raise InvalidParameter(
                field, f"{shown!r} is not a preset style; valid names (GET {STYLES_PATH}): {', '.join(self.names)}"
            )
        return preset

    def image(self, name: str, field: str = "style_preset") -> bytes:
        """The preset's image file bytes (what an upload of the same painting would send)."""
        return self._read(self.get(name, field).image_path)

    def thumbnail(self, name: str) -> bytes:
        return self._read(self.get(name).thumbnail_path)

    def _read(self, path: Path) -> bytes:
        # Kept after the first read: a request handler never waits on the disk for a preset twice.
        data = self._bytes.get(path)
        if data is None:
            data = self._bytes[path] = path.read_bytes()
        return data


@functools.cache
def library() -> PresetLibrary:
    """The shipped presets (presets.json), read once per process."""
    index = json.loads((PRESETS_DIR / "presets.json").read_text(encoding="utf-8"))
    fields = ("name", "title", "artist", "year", "licence", "source")
    return PresetLibrary([Preset(**{key: str(item[key]) for key in fields}) for item in index["presets"]])
