"""Loss-curve plots (matplotlib) and sample image grids (PIL: tiles pasted side by side)."""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

from model.imageio import tensor_to_pil

logger = logging.getLogger(__name__)
SAVE_ATTEMPTS = 3


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Encode ``image`` as PNG, check that the encoded bytes decode back completely, then write atomically.

    Why: on this project's machines an occasional PNG came out with a truncated zlib stream; a grid that
    cannot be opened is worse than a retried one.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(SAVE_ATTEMPTS):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=6 if attempt == 0 else 1)
        data = buffer.getvalue()
        try:
            with Image.open(io.BytesIO(data)) as check:
                check.load()
        except (OSError, SyntaxError) as exc:
            logger.warning("PNG encoding of %s failed its read-back check (%s); retrying", out, exc)
            continue
        tmp = out.with_suffix(".png.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, out)
        return out
    raise OSError(f"could not encode a readable PNG for {out} in {SAVE_ATTEMPTS} attempts")

# Distinguishable line colours (Okabe-Ito palette, colour-blind safe).
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9")


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what exists so far)."""
    out: list[float] = []
    acc = 0.0
    for i, value in enumerate(values):
        acc += value
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_curves(
    steps: Sequence[float],
    series: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    title: str = "",
    x_label: str = "iteration",
    smooth: int = 1,
    size: tuple[int, int] = (900, 420),
) -> Path:
    """One panel per series (losses live on different scales), each a raw line plus a smoothed line, drawn with
    matplotlib (its Agg canvas: no display, no global pyplot state). ``size`` is one panel in pixels.

    ``steps`` are the x values shared by every series. Writes a PNG to ``path`` and returns it.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # the training extra: not a service dependency
    from matplotlib.figure import Figure

    names = list(series)
    if not names or not steps:
        raise ValueError("nothing to plot: need at least one series and one step")
    dpi = 100
    figure = Figure(figsize=(size[0] / dpi, size[1] * len(names) / dpi), dpi=dpi, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    if title:
        figure.suptitle(title)
    axes = figure.subplots(len(names), 1, squeeze=False)[:, 0]
    for index, (name, ax) in enumerate(zip(names, axes, strict=True)):
        colour = PALETTE[index % len(PALETTE)]
        _draw_series(ax, steps, [float(v) for v in series[name]], colour, smooth)
        ax.set_title(name, loc="left", color=colour)
        if min(steps) != max(steps):
            ax.set_xlim(min(steps), max(steps))
        ax.set_xlabel(x_label)
        ax.grid(True, color="#e8e8e8")
    buffer = io.BytesIO()
    canvas.print_png(buffer)
    with Image.open(io.BytesIO(buffer.getvalue())) as drawn:
        return save_png(drawn.convert("RGB"), path)


def _draw_series(ax: Any, steps: Sequence[float], values: list[float], colour: str, smooth: int) -> None:
    """The raw line (light) and its moving average; the y range fits the bulk of the curve, because a few early
    spikes would otherwise flatten everything else."""
    points = [(float(x), y) for x, y in zip(steps, values, strict=True) if math.isfinite(y)]
    if not points:
        return
    xs, ys = zip(*points, strict=True)
    ordered = sorted(ys)
    y_low, y_high = ordered[0], ordered[min(len(ordered) - 1, int(0.98 * len(ordered)))]
    if y_high == y_low:
        y_low, y_high = y_low - 0.5 * (abs(y_low) or 1), y_high + 0.5 * (abs(y_high) or 1)
    clipped = [min(y, y_high) for y in ys]
    smoothed = smooth > 1 and len(ys) > 1
    ax.plot(xs, clipped, color=colour, alpha=0.35 if smoothed else 1.0, linewidth=1 if smoothed else 2,
            marker="o" if len(xs) == 1 else None)
    if smoothed:
        ax.plot(xs, [min(y, y_high) for y in moving_average(list(ys), smooth)], color=colour, linewidth=2)
    ax.set_ylim(y_low, y_high)


def image_grid(
    contents: torch.Tensor,
    styles: torch.Tensor,
    outputs: torch.Tensor,
    path: str | Path,
    *,
    caption: str = "",
) -> Path:
    """Grid with the styles on the top row, the contents in the left column and output (c, s) at
    row c, column s.

    contents: (Nc, 3, S, S); styles: (Ns, 3, S, S); outputs: (Nc * Ns, 3, S, S) ordered content-major.
    """
    n_content, n_style = contents.shape[0], styles.shape[0]
    if outputs.shape[0] != n_content * n_style:
        raise ValueError(f"expected {n_content * n_style} outputs, got {outputs.shape[0]}")
    cell = contents.shape[-1]
    pad = 4
    header = 18 if caption else 0
    grid = Image.new(
        "RGB", ((n_style + 1) * (cell + pad) + pad, header + (n_content + 1) * (cell + pad) + pad), "white"
    )
    if caption:
        ImageDraw.Draw(grid).text((pad, 3), caption, fill="black", font=ImageFont.load_default())

    def paste(img: torch.Tensor, row: int, col: int) -> None:
        tile = tensor_to_pil(img)
        if tile.size != (cell, cell):
            tile = tile.resize((cell, cell), Image.Resampling.BICUBIC)
        grid.paste(tile, (pad + col * (cell + pad), header + pad + row * (cell + pad)))

    for s in range(n_style):
        paste(styles[s], 0, s + 1)
    for c in range(n_content):
        paste(contents[c], c + 1, 0)
        for s in range(n_style):
            paste(outputs[c * n_style + s], c + 1, s + 1)
    return save_png(grid, path)
