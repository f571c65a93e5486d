"""Rebuild the preset styles (service/presets/) and the demo page's sample photo from the ../shared data pool.

Each preset is a painting whose artist died more than 100 years ago, so the work itself is in the public domain
everywhere (life + 100 is the longest copyright term in force); the pictures are faithful photographs of
two-dimensional works, which add no copyright of their own in the US and most other jurisdictions ("PD-art").
Per-file provenance (source repository or Debian package, original path, the pool's licence note) is copied
from ../shared/data/manifest.jsonl into service/presets/PROVENANCE.md and presets.json::

    python -m bench.make_presets             # writes service/presets/ and service/static/sample-photo.jpg
    python -m bench.make_presets --check     # fails if the shipped files differ from what it would write

The output is deterministic (same Pillow, same bytes), so ``--check`` is a real test of the shipped files.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PRESETS_DIR = ROOT / "service" / "presets"
SAMPLE_PHOTO = ROOT / "service" / "static" / "sample-photo.jpg"
LONG_SIDE = 512  # the style path uses STYA2K_STYLE_SIZE (384) of it; 512 leaves room for style_size 512
THUMB_SIDE = 160  # the demo page's 64 px thumbnails at 2.5x device pixels
QUALITY, THUMB_QUALITY = 85, 80
PHOTO_SIDE = 512
YEAR_NOW = 2026


@dataclass(frozen=True)
class Painting:
    name: str
    file: str  # relative to ../shared/data
    title: str
    artist: str
    year: str
    artist_died: int


PAINTINGS: tuple[Painting, ...] = (
    Painting("starry_night", "eval/style/fns__images_styles_starry_night_crop.jpg", "The Starry Night",
             "Vincent van Gogh", "1889", 1890),
    Painting("great_wave", "eval/style/fns__images_styles_wave_crop.jpg", "The Great Wave off Kanagawa",
             "Katsushika Hokusai", "c. 1831", 1849),
    Painting("starry_night_rhone", "train/style/dph__data_32_target.jpg", "Starry Night Over the Rhône",
             "Vincent van Gogh", "1888", 1890),
    Painting("cafe_terrace", "train/style/deb-gcompris__details.rcc_0011beca.jpg", "Café Terrace at Night",
             "Vincent van Gogh", "1888", 1890),
    Painting("night_cafe", "train/style/deb-gcompris__details.rcc_000c6b92.jpg", "The Night Café",
             "Vincent van Gogh", "1888", 1890),
    Painting("langlois_bridge", "train/style/deb-gcompris__details.rcc_0005e77b.jpg", "The Langlois Bridge at Arles",
             "Vincent van Gogh", "1888", 1890),
    Painting("harvest", "train/style/deb-gcompris__details.rcc_000a6442.jpg", "The Harvest",
             "Vincent van Gogh", "1888", 1890),
    Painting("church_auvers", "train/style/deb-gcompris__details.rcc_0016bbe2.jpg", "The Church at Auvers",
             "Vincent van Gogh", "1890", 1890),
    Painting("pere_tanguy", "train/style/deb-gcompris__details.rcc_00031161.jpg", "Portrait of Père Tanguy",
             "Vincent van Gogh", "1887", 1890),
    Painting("bedroom_arles", "train/style/dph__data_12_target.jpg", "Bedroom in Arles",
             "Vincent van Gogh", "1888", 1890),
    Painting("self_portrait", "train/style/dph__data_3_target.jpg", "Self-Portrait",
             "Vincent van Gogh", "1889", 1890),
    Painting("grande_jatte", "train/style/dph__data_13_target.jpg",
             "A Sunday Afternoon on the Island of La Grande Jatte", "Georges Seurat", "1884-1886", 1891),
    Painting("pearl_earring", "train/style/dph__data_15_target.jpg", "Girl with a Pearl Earring",
             "Johannes Vermeer", "c. 1665", 1675),
    Painting("mona_lisa", "train/style/dph__data_17_target.jpg", "Mona Lisa",
             "Leonardo da Vinci", "c. 1503-1519", 1519),
    Painting("card_players", "train/style/dph__data_25_target.jpg", "The Card Players",
             "Paul Cézanne", "1894-1895", 1906),
    Painting("basket_of_apples", "train/style/dph__data_27_target.jpg", "The Basket of Apples",
             "Paul Cézanne", "c. 1893", 1906),
)  # fmt: skip
PHOTO_FILE = "train/content/dreambooth__dataset_cat_00.jpg"
PHOTO_CREDIT = (
    "Google DreamBooth dataset (github.com/google/dreambooth, dataset/cat/00.jpg): CC-BY-4.0 (repository "
    "LICENSE.md; the dataset's references_and_licenses.txt names each photo's source, Unsplash or the authors)"
)
LICENCE = "public domain (artist died {died}; PD-art reproduction)"


def jpeg(img: Image.Image, side: int, quality: int) -> bytes:
    """RGB, longest side at most ``side`` (never upscaled), baseline JPEG without metadata: deterministic bytes."""
    img = img.convert("RGB")
    scale = side / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality, optimize=True)
    return out.getvalue()


def manifest(data: Path) -> dict[str, dict[str, object]]:
    rows = (json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines() if line.strip())
    return {str(row["file"]): row for row in rows}


def build(data: Path) -> dict[Path, bytes]:
    """Every file this script writes, path -> bytes."""
    rows = manifest(data)
    files: dict[Path, bytes] = {}
    index = []
    for p in PAINTINGS:
        if YEAR_NOW - p.artist_died <= 100:
            raise ValueError(f"{p.name}: {p.artist} died {p.artist_died}, not more than 100 years ago")
        row = rows[p.file]
        with Image.open(data / p.file) as img:
            files[PRESETS_DIR / f"{p.name}.jpg"] = jpeg(img, LONG_SIDE, QUALITY)
            files[PRESETS_DIR / "thumbnails" / f"{p.name}.jpg"] = jpeg(img, THUMB_SIDE, THUMB_QUALITY)
        index.append({
            "name": p.name, "title": p.title, "artist": p.artist, "year": p.year,
            "licence": LICENCE.format(died=p.artist_died),
            "source": f"{row['source']}: {row['path']}",
            "source_licence_note": row["license"],
        })  # fmt: skip
    files[PRESETS_DIR / "presets.json"] = (json.dumps({"presets": index}, indent=1, ensure_ascii=False) + "\n").encode()
    files[PRESETS_DIR / "PROVENANCE.md"] = provenance(index).encode()
    with Image.open(data / PHOTO_FILE) as img:
        files[SAMPLE_PHOTO] = jpeg(img, PHOTO_SIDE, QUALITY)
    return files


def provenance(index: list[dict[str, object]]) -> str:
    lines = [
        "# Preset styles: provenance",
        "",
        "Generated by `python -m bench.make_presets` from the project's data pool (../shared/data, not shipped).",
        "Every painting's artist died more than 100 years ago, so the work is in the public domain everywhere; the",
        "files are faithful photographs of two-dimensional works, which carry no copyright of their own in the US",
        "and most other jurisdictions (PD-art). `source` is where the pool took each file from, with the pool's",
        "licence note for that source (which covers the repository, not the painting).",
        "",
        "| name | title | artist | year | licence | source | pool's licence note |",
        "|---|---|---|---|---|---|---|",
    ]
    for item in index:
        cells = [item[k] for k in ("name", "title", "artist", "year", "licence", "source", "source_licence_note")]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    lines += [
        "",
        "Resized to at most 512 px on the long side (JPEG quality 85) and 160 px thumbnails (quality 80).",
        "",
        "The demo page's sample photo (`service/static/sample-photo.jpg`, a cat): " + PHOTO_CREDIT + ".",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="the data pool (manifest.jsonl beside train/, eval/)")
    parser.add_argument("--check", action="store_true", help="compare with the shipped files instead of writing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    files = build(args.data)
    if args.check:
        stale = [str(path.relative_to(ROOT)) for path, data in files.items()
                 if not path.is_file() or path.read_bytes() != data]  # fmt: skip
        for path in stale:
            log.error("differs from what bench.make_presets writes: %s", path)
        return 1 if stale else 0
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    total = sum(len(data) for data in files.values())
    log.info("wrote %d files, %.2f MB, under %s", len(files), total / 1e6, PRESETS_DIR.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
