"""Compute the per-channel mean activations that normalise the VGG-19 encoder (Gatys et al.'s `vgg_normalised`).

Deterministic: every k-th image (sorted by name) of a folder of natural photos, short side resized to 256 and
centre-cropped to 256x256. Writes `model/assets/vgg19_channel_means.pt` ({"means": {conv: (C,)}, "images": [...]})::

    python -m training.calibrate --images ../shared/data/train/content --count 256
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from PIL import Image

from model.encoder import CHANNEL_MEANS_FILE, CONV_NAMES, VGGEncoder
from model.imageio import IMAGE_SUFFIXES, pil_to_tensor

log = logging.getLogger(__name__)


def select_images(folder: Path, count: int) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"no images in {folder}")
    step = max(1, len(files) // count)
    return files[::step][:count]


def load_square(path: Path, size: int = 256) -> torch.Tensor:
    img = Image.open(path).convert("RGB")
    scale = size / min(img.size)
    img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))), Image.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return pil_to_tensor(img.crop((left, top, left + size, top + size)))


@torch.inference_mode()
def channel_means(paths: list[Path], batch: int = 8) -> dict[str, torch.Tensor]:
    encoder = VGGEncoder(normalised=False)
    sums = {name: torch.zeros(encoder.convs[name].out_channels, dtype=torch.float64) for name in CONV_NAMES}
    counts = dict.fromkeys(CONV_NAMES, 0)
    for i in range(0, len(paths), batch):
        x = torch.stack([load_square(p) for p in paths[i:i + batch]])
        for name, act in encoder.activations(x).items():
            sums[name] += act.double().sum(dim=(0, 2, 3))
            counts[name] += act.shape[0] * act.shape[2] * act.shape[3]
        log.info("calibrated %d/%d images", min(i + batch, len(paths)), len(paths))
    return {name: (sums[name] / counts[name]).float() for name in CONV_NAMES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=Path("../shared/data/train/content"))
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--out", type=Path, default=CHANNEL_MEANS_FILE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = select_images(args.images, args.count)
    means = channel_means(paths)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"means": means, "images": [p.name for p in paths]}, args.out)
    log.info("wrote %s from %d images", args.out, len(paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
