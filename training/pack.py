"""Pre-decoded training data: every image decoded and resized once into one memory-mapped uint8 file.

Decoding a JPEG of up to 512 px and resizing it costs more per training item than the crop itself, and on a
2-core machine the DataLoader workers doing it take cores away from the training step. A pack stores each
image already resized to the training load size (short side), so an item is a slice of a memory map plus a
random crop. Items are the same pure function of (seed, index) as `training.data.ContentStylePairs`, and when
every source file decodes, a pack built at the run's load size yields bit-identical crops.

Layout of a pack folder::

    index.json      {"format": "stya2k-pack", "version": 1, "load_size": S, "pools": {...}}
    content.u8      concatenated (h, w, 3) uint8 images of the content pool
    style-<k>.u8    the same for style group k (one per style folder, or one when not balanced)

    python -m training.pack --out ~/.cache/stya2k/pack-256 --load-size 256
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from model.checkpoint import default_cache_dir
from training.data import (
    DEFAULT_CONTENT_DIRS,
    DEFAULT_STYLE_DIRS,
    EpochPermutation,
    list_images,
    load_rgb,
    resize_short_side,
)

logger = logging.getLogger(__name__)

PACK_FORMAT = "stya2k-pack"
PACK_VERSION = 1


class PackError(ValueError):
    """A pack folder is missing, incomplete or built for another recipe."""


@dataclass(frozen=True)
class PackedImage:
    offset: int  # byte offset in the pool file
    height: int
    width: int

    @property
    def nbytes(self) -> int:
        return self.height * self.width * 3


def _write_pool(files: list[Path], load_size: int, out: Path) -> tuple[list[PackedImage], list[str]]:
    """Decode + resize `files` into `out` (raw HWC uint8); returns the entries and the files kept."""
    entries: list[PackedImage] = []
    kept: list[str] = []
    offset = 0
    tmp = out.with_suffix(".tmp")
    with tmp.open("wb") as handle:
        for i, path in enumerate(files):
            try:
                img = resize_short_side(load_rgb(path), load_size)
            except (OSError, ValueError) as exc:
                logger.warning("pack: skipping %s", exc)
                continue
            data = img.tobytes()  # (h, w, 3) row-major, like PIL's RGB layout
            handle.write(data)
            entries.append(PackedImage(offset, img.size[1], img.size[0]))
            kept.append(str(path))
            offset += len(data)
            if (i + 1) % 500 == 0:
                logger.info("pack %s: %d/%d images, %.0f MiB", out.name, i + 1, len(files), offset / 2**20)
    os.replace(tmp, out)
    return entries, kept


def build_pack(out: str | Path, content_dirs: tuple[str, ...], style_dirs: tuple[str, ...], load_size: int,
               balance_style_dirs: bool = True) -> Path:
    """Write a pack folder; style folders stay separate groups (as `ContentStylePairs` balances them)."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = [list_images([d]) for d in style_dirs]
    groups = [g for g in groups if g]
    if not balance_style_dirs:
        groups = [sorted(f for g in groups for f in g)]
    pools: dict[str, dict[str, object]] = {}
    for name, files in [("content", list_images(content_dirs))] + [(f"style-{k}", g) for k, g in enumerate(groups)]:
        entries, kept = _write_pool(files, load_size, out_dir / f"{name}.u8")
        pools[name] = {"entries": [[e.offset, e.height, e.width] for e in entries], "files": kept,
                       "skipped": len(files) - len(kept)}
    index = {"format": PACK_FORMAT, "version": PACK_VERSION, "load_size": load_size,
             "content_dirs": list(content_dirs), "style_dirs": list(style_dirs),
             "balance_style_dirs": balance_style_dirs, "pools": pools}
    tmp = out_dir / "index.json.tmp"
    tmp.write_text(json.dumps(index))
    os.replace(tmp, out_dir / "index.json")  # the index is written last: a pack without it is incomplete
    return out_dir


class PackPool:
    """One pool of a pack: a read-only memory map and its (offset, h, w) table."""

    def __init__(self, path: Path, entries: list[list[int]], files: list[str]) -> None:
        if not entries:
            raise PackError(f"pack pool {path.name} holds no images")
        self.entries = [PackedImage(*e) for e in entries]
        self.files = files
        size = path.stat().st_size
        expected = self.entries[-1].offset + self.entries[-1].nbytes
        if size != expected:
            raise PackError(f"{path} is {size} bytes, its index says {expected}: rebuild the pack")
        self.data = torch.from_file(str(path), shared=False, size=size, dtype=torch.uint8)  # mmap, lazy

    def __len__(self) -> int:
        return len(self.entries)

    def image(self, index: int) -> Tensor:
        """(h, w, 3) uint8 view of image `index` (no copy)."""
        e = self.entries[index]
        return self.data[e.offset:e.offset + e.nbytes].view(e.height, e.width, 3)


def random_crop_packed(img: Tensor, crop_size: int, hflip: bool, rng: random.Random) -> Tensor:
    """The crop of `training.data.random_crop` on an image already at the load size: (3, S, S) float in [0, 1].

    Draws from `rng` in the same order (left, top, flip) so a pack item equals the folder item.
    """
    height, width = img.shape[:2]
    left = rng.randint(0, width - crop_size)
    top = rng.randint(0, height - crop_size)
    crop = img[top:top + crop_size, left:left + crop_size]  # (S, S, 3)
    if hflip and rng.random() < 0.5:
        crop = crop.flip(1)
    return crop.permute(2, 0, 1).float().div_(255.0)  # (3, S, S)


class PackedPairs(Dataset[tuple[Tensor, Tensor]]):
    """`ContentStylePairs` over a pack: item i -> (content crop, style crop), a pure function of (seed, i)."""

    def __init__(self, pack_dir: str | Path, crop_size: int, seed: int = 0, hflip: bool = True,
                 load_size: int | None = None) -> None:
        root = Path(pack_dir)
        index_path = root / "index.json"
        if not index_path.is_file():
            raise PackError(f"{root} is not a complete pack (no index.json): build it with python -m training.pack")
        index = json.loads(index_path.read_text())
        if index.get("format") != PACK_FORMAT or index.get("version") != PACK_VERSION:
            raise PackError(f"{root} is not a version-{PACK_VERSION} StyA2K pack")
        if load_size is not None and index["load_size"] != load_size:
            raise PackError(f"{root} was built at load size {index['load_size']}, the run asks {load_size}")
        if crop_size > index["load_size"]:
            raise PackError(f"crop size {crop_size} exceeds the pack's load size {index['load_size']}")
        self.index = index
        self.crop_size, self.seed, self.hflip = crop_size, seed, hflip
        pools = index["pools"]
        self.content = PackPool(root / "content.u8", pools["content"]["entries"], pools["content"]["files"])
        names = sorted((n for n in pools if n.startswith("style-")), key=lambda n: int(n.split("-")[1]))
        self.style_groups = [PackPool(root / f"{n}.u8", pools[n]["entries"], pools[n]["files"]) for n in names]
        self._content_index = EpochPermutation(len(self.content), seed)

    def __len__(self) -> int:
        return len(self.content)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        rng = random.Random(f"{self.seed}-item-{index}")
        content = self.content.image(self._content_index(index))
        group = self.style_groups[rng.randrange(len(self.style_groups))]
        style = group.image(rng.randrange(len(group)))
        return (random_crop_packed(content, self.crop_size, self.hflip, rng),
                random_crop_packed(style, self.crop_size, self.hflip, rng))

    @property
    def content_files(self) -> list[Path]:
        return [Path(f) for f in self.content.files]

    @property
    def style_files(self) -> list[Path]:
        return sorted(Path(f) for g in self.style_groups for f in g.files)

    def summary(self) -> dict[str, object]:
        return {
            "pack": True,
            "content_dirs": self.index["content_dirs"],
            "style_dirs": self.index["style_dirs"],
            "n_content": len(self.content),
            "n_style": [len(g) for g in self.style_groups],
            "load_size": self.index["load_size"],
            "crop_size": self.crop_size,
            "hflip": self.hflip,
            "balance_style_dirs": self.index["balance_style_dirs"],
        }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m training.pack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="pack folder (default: <cache>/pack-<load size>)")
    parser.add_argument("--load-size", type=int, default=256, help="short side every image is resized to")
    parser.add_argument("--content-dir", action="append", dest="content_dirs", metavar="DIR")
    parser.add_argument("--style-dir", action="append", dest="style_dirs", metavar="DIR")
    parser.add_argument("--no-balance", action="store_true", help="one style group instead of one per folder")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else default_cache_dir() / f"pack-{args.load_size}"
    build_pack(out, tuple(args.content_dirs or DEFAULT_CONTENT_DIRS), tuple(args.style_dirs or DEFAULT_STYLE_DIRS),
               args.load_size, balance_style_dirs=not args.no_balance)
    logger.info("wrote pack %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
