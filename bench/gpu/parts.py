"""Split a file into parts that fit what comes back from a device lease, and join them with sha256 checks.

A lease returns at most 8 files of 16 MiB each from $OUT; release weights (fp16, ~22 MB) are larger, so the
lease splits them and records every part's sha256 and the whole file's sha256 in its summary. Joining checks
each part before anything is written, so a truncated or corrupted transfer is refused with the part's name.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Under the lease's 16 MiB per returned file, with room to spare.
DEFAULT_PART_BYTES = 15 * 2**20
CHUNK = 1 << 20


class PartsError(ValueError):
    """A part is missing, has the wrong size or sha256, or the joined file does not match its record."""


@dataclass(frozen=True)
class Part:
    name: str
    bytes: int
    sha256: str


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_path(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def split_file(path: str | Path, out_dir: str | Path, part_bytes: int = DEFAULT_PART_BYTES) -> dict[str, Any]:
    """Write ``<name>.part1``, ``.part2``, ... of ``path`` into ``out_dir``; returns the record to keep with them:
    {"file", "bytes", "sha256", "part_bytes", "parts": [{"name", "bytes", "sha256"}, ...]}."""
    if part_bytes < 1:
        raise ValueError(f"part_bytes must be >= 1, got {part_bytes}")
    src, dest = Path(path), Path(out_dir)
    dest.mkdir(parents=True, exist_ok=True)
    parts: list[Part] = []
    with src.open("rb") as handle:
        while chunk := handle.read(part_bytes):
            name = f"{src.name}.part{len(parts) + 1}"
            (dest / name).write_bytes(chunk)
            parts.append(Part(name, len(chunk), sha256_bytes(chunk)))
    if not parts:
        raise PartsError(f"{src} is empty: nothing to split")
    return {"file": src.name, "bytes": src.stat().st_size, "sha256": sha256_path(src), "part_bytes": part_bytes,
            "parts": [asdict(p) for p in parts]}


def check_parts(record: dict[str, Any], parts_dir: str | Path) -> list[Path]:
    """Every part of ``record`` exists in ``parts_dir`` with its recorded size and sha256; returns their paths."""
    folder = Path(parts_dir)
    paths = []
    for entry in record["parts"]:
        path = folder / entry["name"]
        if not path.is_file():
            raise PartsError(f"part {entry['name']} is missing from {folder}")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise PartsError(f"part {entry['name']} is {size} bytes, the summary records {entry['bytes']}: "
                             "the transfer was cut short or the file was replaced")
        digest = sha256_path(path)
        if digest != entry["sha256"]:
            raise PartsError(f"part {entry['name']} has sha256 {digest}, the summary records {entry['sha256']}: "
                             "the part is corrupted; fetch it again")
        paths.append(path)
    return paths


def join_parts(record: dict[str, Any], parts_dir: str | Path, out: str | Path) -> str:
    """Concatenate the checked parts into ``out`` (atomically) and verify the whole file's sha256; returns it."""
    paths = check_parts(record, parts_dir)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".joining")
    digest = hashlib.sha256()
    try:
        with tmp.open("wb") as handle:
            for path in paths:
                data = path.read_bytes()
                digest.update(data)
                handle.write(data)
        if digest.hexdigest() != record["sha256"]:
            raise PartsError(f"the joined {record['file']} has sha256 {digest.hexdigest()}, the summary records "
                             f"{record['sha256']}: parts are out of order or from another run")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return digest.hexdigest()
