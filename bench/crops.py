"""A crop grid at 100% zoom, where a stylization's brush strokes can be judged (issue 33).

Each photo is stylized with each style at a ``--size`` px short side (512: the paper's inference size) and the
centre ``--crop`` x ``--crop`` square (256) of every output is pasted as it is: no resampling, one output pixel is
one grid pixel. Beside them, as row and column heads, the same centre crop of the photo (what the output
replaced) and the centre crop of the style *as the network saw it* (at ``--style-size`` with ``--style-fit``,
as the service prepares it), so a stroke in the painting and in the output are seen at the same scale.

Defaults: 4 photos and 6 public-domain paintings of ``../shared/data/eval`` (held out from training; never
committed, only the rendered grid is). The photos are 512 x 512 files, so at ``--size 512`` not even the input is
resampled. ``--weights`` takes what ``python -m training.evaluate`` takes (a file, ``random:a2k``,
``reference:color``), so every candidate gets its own grid::

    python -m bench.crops --weights weights/stya2k-v0.6-cpu.pt --style-size 256   # -> docs/crops-<tag>.jpg
    python -m bench.crops --weights weights/stya2k-v0.6-cpu.pt --style-size 512 --out docs/crops-v0.6-s512.jpg
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from model.checkpoint import default_weights_path
from model.imageio import pil_to_tensor, tensor_to_pil
from training.data import load_rgb, resize_short_side
from training.evaluate import STYLE_FITS, load_weights, prepare_style

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
EVAL = REPO_ROOT.parent / "shared" / "data" / "eval"
# (file in eval/content, caption): 512 x 512 photos of four kinds of subject (fur and feathers, foliage, buildings).
CONTENTS: tuple[tuple[str, str], ...] = (
    ("artflow__data_content_An_up-close_picture_of_a_curious_male_domestic_shorthair_tabby_cat.jpg", "cat"),
    ("adaattn__datasets_contents_bird.jpg", "kingfisher"),
    ("nnst__inputs_content_C5.jpg", "valley"),
    ("adaattn__datasets_contents_tubingen.jpg", "Tuebingen"),
)
# (file in eval/style, caption): public-domain works with distinct marks: hatching, wave crests, swirls, strokes.
# The eval set has no Scream and no attributed Turner; sty_24 is an unattributed 19th-century storm at sea.
STYLES: tuple[tuple[str, str], ...] = (
    ("adain__input_style_woman_in_peasant_dress.jpg", "red-chalk drawing"),
    ("styleid__data_sty_24.jpg", "storm at sea"),
    ("fns__images_styles_starry_night_crop.jpg", "Starry Night"),
    ("fns__images_styles_wave_crop.jpg", "Great Wave"),
    ("artflow__data_style_Vincent-van-Gogh-Whaet-Field-with-Cypresses.-Image-via-wikimedia.org_.jpg",
     "Wheat Field w. Cypresses"),
    ("styleid__data_sty_37.jpg", "Manet, Tarring the Boat"),
)
PAD = 6
TITLE_HEIGHT = 18


@dataclass(frozen=True)
class GridSpec:
    """What to render: the images and the sizes (see the module docstring)."""

    contents: tuple[Path, ...]
    styles: tuple[Path, ...]
    content_captions: tuple[str, ...]
    style_captions: tuple[str, ...]
    size: int = 512  # output (content) short side
    crop: int = 256  # side of each cell: the centre crop of the output, pasted unscaled
    style_size: int = 384  # the network's style input (the service's STYA2K_STYLE_SIZE)
    style_fit: str = "crop"  # the service's default STYA2K_STYLE_FIT


def centre_crop(img: Image.Image, side: int) -> Image.Image:
    """The centred ``side`` x ``side`` square of ``img`` (narrower where the image is): a cut, never a resample."""
    width, height = min(side, img.width), min(side, img.height)
    left, top = (img.width - width) // 2, (img.height - height) // 2
    return img.crop((left, top, left + width, top + height))


def _caption(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str) -> None:
    """Black text on a white box at the top-left of a head cell (the output cells carry no text)."""
    box = draw.textbbox(xy, text)
    draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill="white")
    draw.text(xy, text, fill="black")


def _cell_origin(row: int, col: int, crop: int) -> tuple[int, int]:
    """Top-left of grid cell (row, col); row 0 and column 0 are the heads."""
    return PAD + col * (crop + PAD), TITLE_HEIGHT + PAD + row * (crop + PAD)


def _paste_centred(grid: Image.Image, img: Image.Image, origin: tuple[int, int], crop: int) -> None:
    grid.paste(img, (origin[0] + (crop - img.width) // 2, origin[1] + (crop - img.height) // 2))


@torch.inference_mode()
def render(net: torch.nn.Module, spec: GridSpec, title: str) -> Image.Image:
    """The grid: photos down, styles across, each output's centre crop at 100% zoom."""
    crop = spec.crop
    grid = Image.new("RGB", _cell_origin(len(spec.contents) + 1, len(spec.styles) + 1, crop), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((PAD, 3), title, fill="black")
    legend = _cell_origin(0, 0, crop)
    draw.multiline_text((legend[0] + 4, legend[1] + 4), "columns: centre of the style\nas the network saw it\n\n"
                        f"rows: centre of the photo\n\ncells: centre {crop} px of the\n"
                        f"{spec.size} px output, 100% zoom", fill="black")
    styles = []
    for j, (path, caption) in enumerate(zip(spec.styles, spec.style_captions, strict=True)):
        style = prepare_style(load_rgb(path, min_short_side=16), spec.style_size, spec.style_fit)
        origin = _cell_origin(0, j + 1, crop)
        _paste_centred(grid, centre_crop(style, crop), origin, crop)
        _caption(draw, (origin[0] + 3, origin[1] + 3), caption)
        styles.append(pil_to_tensor(style)[None])  # (1, 3, Hs, Ws)
    for i, (path, caption) in enumerate(zip(spec.contents, spec.content_captions, strict=True)):
        photo = resize_short_side(load_rgb(path, min_short_side=16), spec.size)
        origin = _cell_origin(i + 1, 0, crop)
        _paste_centred(grid, centre_crop(photo, crop), origin, crop)
        _caption(draw, (origin[0] + 3, origin[1] + 3), caption)
        content = pil_to_tensor(photo)[None]  # (1, 3, H, W)
        for j, style in enumerate(styles):
            out = tensor_to_pil(net.stylize(content, style)[0].float())  # (3, H, W) -> the full output
            grid.paste(centre_crop(out, crop), _cell_origin(i + 1, j + 1, crop))
            log.info("crop grid cell %d,%d done", i, j)
    return grid


def default_files(folder: Path, entries: Sequence[tuple[str, str]]) -> tuple[list[Path], list[str]]:
    return [folder / name for name, _ in entries], [caption for _, caption in entries]


def _captions(paths: Sequence[Path], known: dict[str, str]) -> list[str]:
    """The default files' captions, else the file stem (cut to fit a cell)."""
    return [known.get(p.name, p.stem[:28]) for p in paths]


def build_spec(args: argparse.Namespace, parser: argparse.ArgumentParser) -> GridSpec:
    known = dict(CONTENTS) | dict(STYLES)
    contents = args.contents or default_files(EVAL / "content", CONTENTS)[0]
    styles = args.styles or default_files(EVAL / "style", STYLES)[0]
    missing = [str(p) for p in (*contents, *styles) if not Path(p).is_file()]
    if missing:
        parser.error(f"image files not found: {', '.join(missing)} (the defaults are in {EVAL}; "
                     "give --contents and --styles to use others)")
    if args.crop > args.size:
        parser.error(f"--crop {args.crop} is larger than the output's short side --size {args.size}")
    if min(args.crop, args.size, args.style_size) < 16:
        parser.error("--size, --crop and --style-size must be at least 16 px")
    return GridSpec(contents=tuple(map(Path, contents)), styles=tuple(map(Path, styles)),
                    content_captions=tuple(_captions(contents, known)), style_captions=tuple(_captions(styles, known)),
                    size=args.size, crop=args.crop, style_size=args.style_size, style_fit=args.style_fit)


def default_out(name: str, spec: GridSpec) -> Path:
    """docs/crops-<weights stem>-s<style size>[-<fit>].jpg: one file per candidate and style size."""
    stem = Path(name).stem.replace(" ", "-").replace("(", "").replace(")", "").replace(":", "-")
    fit = "" if spec.style_fit == "crop" else f"-{spec.style_fit}"
    return REPO_ROOT / "docs" / f"crops-{stem}-s{spec.style_size}{fit}.jpg"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.crops", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None,
                        help="weights file, 'random:<arch>' or 'reference:color' (default: the shipped weights)")
    parser.add_argument("--style-size", type=int, default=384,
                        help="the network's style input in px (the service's STYA2K_STYLE_SIZE, default 384)")
    parser.add_argument("--style-fit", choices=STYLE_FITS, default="crop",
                        help="how the style becomes that input (training.evaluate: default crop = the service's)")
    parser.add_argument("--size", type=int, default=512, help="output (content) short side in px")
    parser.add_argument("--crop", type=int, default=256, help="side of the centre crop shown per output")
    parser.add_argument("--contents", nargs="+", type=Path, default=None, help="photo files (default: 4 eval photos)")
    parser.add_argument("--styles", nargs="+", type=Path, default=None,
                        help="style files (default: 6 public-domain eval paintings)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JPEG (or PNG) to write (default docs/crops-<weights>-s<style size>.jpg)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = build_spec(args, parser)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        net, name = load_weights(args.weights or str(default_weights_path()))
    except (ValueError, OSError, RuntimeError) as exc:
        log.error("cannot load weights: %s", exc)
        return 2
    net = net.eval()
    iterations = net.meta.get("iterations")
    title = (f"{name}" + (f" (iteration {iterations})" if iterations is not None else "") +
             f" | output {spec.size} px short side, centre {spec.crop} px at 100% | style {spec.style_size} px "
             f"({spec.style_fit})")
    out = args.out or default_out(name, spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    # 4:4:4 chroma and a high quality: JPEG's default 4:2:0 would halve the colour resolution of the strokes.
    render(net, spec, title).save(out, quality=92, subsampling=0)
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
