"""Render the README's gallery: a grid of our stylizations, public-domain paintings across, photos down.

Styles: Van Gogh paintings (public domain, as packaged by Debian's GCompris). Content: DreamBooth dataset photos
(CC-BY-4.0). Both sit in the ../shared training pool, which is never committed; only this rendered grid is.

Each output is made as the service makes it by default: the photo at a 512 px short side, the painting prepared
at 384 px with the service's style fit (centre crop), then shown at the cell size (``--size``). The crop grid
(bench/crops.py) shows outputs at 100% zoom::

    python -m bench.gallery --weights weights/stya2k-v0.6-cpu.pt --out docs/gallery.jpg
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from model import load_model
from model.imageio import pil_to_tensor, tensor_to_pil
from training.evaluate import prepare_style

log = logging.getLogger(__name__)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "train"
STYLES = (
    "deb-gcompris__details.rcc_0005e77b.jpg",
    "deb-gcompris__details.rcc_000a6442.jpg",
    "deb-gcompris__details.rcc_00031161.jpg",
    "deb-gcompris__details.rcc_0011beca.jpg",
    "deb-gcompris__details.rcc_000c6b92.jpg",
    "deb-gcompris__details.rcc_0016bbe2.jpg",
)
CONTENTS = (
    "dreambooth__dataset_cat_00.jpg",
    "dreambooth__dataset_berry_bowl_02.jpg",
    "dreambooth__dataset_backpack_dog_00.jpg",
    "dreambooth__dataset_bear_plushie_00.jpg",
)


def fit_square(img: Image.Image, size: int) -> Image.Image:
    """Short side to `size`, centre crop: every cell of the grid the same size."""
    scale = size / min(img.size)
    img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))), Image.LANCZOS)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return img.crop((left, top, left + size, top + size))


@torch.inference_mode()
def render(weights: Path | None, size: int, content_size: int = 512, style_size: int = 384, style_fit: str = "crop",
           pad: int = 6) -> Image.Image:
    """The grid: paintings across (as the network saw them), photos down, each output at ``size`` px a cell."""
    net = load_model(weights)
    paintings = [Image.open(SHARED / "style" / name).convert("RGB") for name in STYLES]
    styles = [prepare_style(painting, style_size, style_fit) for painting in paintings]
    contents = [fit_square(Image.open(SHARED / "content" / name).convert("RGB"), content_size) for name in CONTENTS]
    cell = size + pad
    grid = Image.new("RGB", (pad + cell * (len(styles) + 1), pad + cell * (len(contents) + 1)), "white")
    for j, style in enumerate(styles):
        grid.paste(fit_square(style, size), (pad + cell * (j + 1), pad))
    for i, content in enumerate(contents):
        grid.paste(fit_square(content, size), (pad, pad + cell * (i + 1)))
        for j, style in enumerate(styles):
            out = net.stylize(pil_to_tensor(content)[None], pil_to_tensor(style)[None])[0]
            grid.paste(fit_square(tensor_to_pil(out), size), (pad + cell * (j + 1), pad + cell * (i + 1)))
            log.info("gallery cell %d,%d done", i, j)
    label = f"StyA2K {net.meta.get('version', '')}"
    ImageDraw.Draw(grid).text((pad + 4, pad + 4), label, fill="black")
    return grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=None, help="weights file (default: the shipped weights)")
    parser.add_argument("--size", type=int, default=256, help="side of each square cell in pixels")
    parser.add_argument("--content-size", type=int, default=512, help="the photo's short side (the service's default)")
    parser.add_argument("--style-size", type=int, default=384, help="STYA2K_STYLE_SIZE (the service's default)")
    parser.add_argument("--out", type=Path, default=Path("docs/gallery.jpg"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not SHARED.is_dir():
        parser.error(f"{SHARED} is missing: the gallery is rendered from the ../shared training pool")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    render(args.weights, args.size, args.content_size, args.style_size).save(args.out, quality=90)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
