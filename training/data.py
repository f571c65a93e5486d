"""Training / evaluation image data: folder listing, robust loading, random crops, content-style pairs.

Determinism: every training item is a pure function of (seed, item index), so a run resumed at
iteration ``k`` sees exactly the batches it would have seen without the interruption, whatever the
number of DataLoader workers.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler

from model.imageio import IMAGE_SUFFIXES, pil_to_tensor

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_CONTENT_DIRS = (str(SHARED_DATA / "train" / "content"),)
DEFAULT_STYLE_DIRS = (str(SHARED_DATA / "train" / "style"), str(SHARED_DATA / "train" / "style_lowres"))
# Images smaller than this on their short side are too degraded to learn from, even upscaled.
MIN_SHORT_SIDE = 32
# How many other files to try when a sampled file turns out corrupt or tiny.
MAX_LOAD_ATTEMPTS = 16


class DataError(ValueError):
    """Raised for unusable data folders (missing, empty)."""


def list_images(folders: Sequence[str | Path]) -> list[Path]:
    """All image files (by suffix) directly or recursively under ``folders``, sorted for reproducibility."""
    files: list[Path] = []
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist or is not a directory")
        files.extend(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return sorted(files)


def load_rgb(path: str | Path, min_short_side: int = MIN_SHORT_SIDE) -> Image.Image:
    """Decode ``path`` as an RGB image (EXIF orientation applied).

    Raises ``OSError``/``ValueError`` for unreadable, truncated or too small files.
    """
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img.load()
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise OSError(f"cannot decode image {path}: {exc}") from exc
    if min(rgb.size) < min_short_side:
        raise ValueError(f"image {path} is {rgb.size[0]}x{rgb.size[1]}, short side < {min_short_side} px")
    return rgb


def resize_short_side(img: Image.Image, short_side: int) -> Image.Image:
    """Resize so the short side equals ``short_side`` (up or down), keeping the aspect ratio."""
    width, height = img.size
    scale = short_side / min(width, height)
    new_size = (max(short_side, round(width * scale)), max(short_side, round(height * scale)))
    if new_size == img.size:
        return img
    return img.resize(new_size, Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class CropConfig:
    """How a training image becomes a crop: resize short side, random square crop, optional flip."""

    load_size: int = 512
    crop_size: int = 256
    hflip: bool = True

    def __post_init__(self) -> None:
        if self.crop_size < 16 or self.load_size < self.crop_size:
            raise ValueError(f"need 16 <= crop_size <= load_size, got {self.crop_size=} {self.load_size=}")


def random_crop(img: Image.Image, cfg: CropConfig, rng: random.Random) -> torch.Tensor:
    """Resize short side to ``cfg.load_size``, crop ``cfg.crop_size`` at a random place, maybe flip."""
    img = resize_short_side(img, cfg.load_size)
    width, height = img.size
    left = rng.randint(0, width - cfg.crop_size)
    top = rng.randint(0, height - cfg.crop_size)
    img = img.crop((left, top, left + cfg.crop_size, top + cfg.crop_size))
    if cfg.hflip and rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return pil_to_tensor(img)  # (3, crop, crop)


class RobustImagePool:
    """A fixed list of image files; loading a bad file logs a warning once and falls back to another."""

    def __init__(self, files: Sequence[Path], name: str) -> None:
        if not files:
            raise DataError(f"no images found for the {name} set")
        self.files = list(files)
        self.name = name
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int, rng: random.Random) -> Image.Image:
        """Load file ``index``; if it is corrupt or tiny, try other (rng-chosen) files instead."""
        candidate = index % len(self.files)
        for _ in range(MAX_LOAD_ATTEMPTS):
            if candidate not in self._bad:
                try:
                    return load_rgb(self.files[candidate])
                except (OSError, ValueError) as exc:
                    self._bad.add(candidate)
                    logger.warning("skipping %s image: %s", self.name, exc)
            candidate = rng.randrange(len(self.files))
        raise DataError(f"{MAX_LOAD_ATTEMPTS} consecutive unusable files in the {self.name} set")


@dataclass(frozen=True)
class PairDataConfig:
    """Folders and crop recipe of the content/style training pairs."""

    content_dirs: tuple[str, ...]
    style_dirs: tuple[str, ...]
    crop: CropConfig = CropConfig()
    seed: int = 0
    # Pick the style folder uniformly first, then a file in it, so a small folder of high-resolution
    # paintings is not drowned by a large folder of low-resolution ones.
    balance_style_dirs: bool = True


class EpochPermutation:
    """Which pool file item ``index`` uses: a fresh seeded permutation of the pool each epoch (the current
    epoch's is cached). The folder dataset and the pack (`training.pack`) share it, so both see one order."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed
        self._epoch = -1
        self._perm: list[int] = []

    def __call__(self, index: int) -> int:
        epoch, offset = divmod(index, self.size)
        if epoch != self._epoch:
            perm = list(range(self.size))
            random.Random(f"{self.seed}-perm-{epoch}").shuffle(perm)
            self._perm, self._epoch = perm, epoch
        return self._perm[offset]


class ContentStylePairs(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Item ``i`` -> (content crop (3, S, S), style crop (3, S, S)), a pure function of (seed, i).

    Content files are visited as a fresh seeded permutation each epoch; styles are drawn at random.
    The dataset is "infinite": any non-negative index is valid (use ``StepSampler``).
    """

    def __init__(self, cfg: PairDataConfig) -> None:
        self.cfg = cfg
        self.content = RobustImagePool(list_images(cfg.content_dirs), "content")
        style_groups = [list_images([d]) for d in cfg.style_dirs]
        style_groups = [g for g in style_groups if g]
        if not style_groups:
            raise DataError(f"no style images found in {list(cfg.style_dirs)}")
        if not cfg.balance_style_dirs:
            style_groups = [sorted(f for g in style_groups for f in g)]
        self.style_groups = [RobustImagePool(g, "style") for g in style_groups]
        self._content_index = EpochPermutation(len(self.content), cfg.seed)

    def __len__(self) -> int:
        return len(self.content)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = random.Random(f"{self.cfg.seed}-item-{index}")
        content_img = self.content.load(self._content_index(index), rng)
        group = self.style_groups[rng.randrange(len(self.style_groups))]
        style_img = group.load(rng.randrange(len(group)), rng)
        return random_crop(content_img, self.cfg.crop, rng), random_crop(style_img, self.cfg.crop, rng)

    def summary(self) -> dict[str, object]:
        """What the run trained on (stored in checkpoints' meta)."""
        return {
            "content_dirs": list(self.cfg.content_dirs),
            "style_dirs": list(self.cfg.style_dirs),
            "n_content": len(self.content),
            "n_style": [len(g) for g in self.style_groups],
            "load_size": self.cfg.crop.load_size,
            "crop_size": self.cfg.crop.crop_size,
            "hflip": self.cfg.crop.hflip,
            "balance_style_dirs": self.cfg.balance_style_dirs,
        }


class StepSampler(Sampler[int]):
    """Yields item indices ``start, start+1, ..., stop-1``: iteration ``k`` of batch size ``B`` uses
    items ``k*B .. k*B+B-1``, so resuming only needs the iteration number."""

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def load_fixed_images(files: Sequence[Path], short_side: int, center_crop: int | None = None) -> torch.Tensor:
    """Load images resized to ``short_side`` and centre-cropped to a square of ``center_crop``
    (default ``short_side``) so they stack: returns (N, 3, S, S)."""
    size = center_crop or short_side
    tensors = []
    for path in files:
        img = resize_short_side(load_rgb(path), short_side)
        width, height = img.size
        left, top = (width - size) // 2, (height - size) // 2
        tensors.append(pil_to_tensor(img.crop((left, top, left + size, top + size))))
    return torch.stack(tensors)  # (N, 3, S, S)
