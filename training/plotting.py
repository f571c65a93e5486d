"""Loss-curve plots and image grids drawn with PIL only (no matplotlib / numpy dependency)."""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

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
PALETTE = ((0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233))


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


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round-numbered ticks covering [low, high]."""
    span = high - low if high > low else max(abs(high), 1.0)
    raw_step = span / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw_step))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw_step)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-6:
        if value >= low - step * 1e-6:
            ticks.append(round(value, 10))
        value += step
    return ticks


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:.1e}"
    return f"{value:g}"


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
    """One panel per series (losses live on different scales), each a raw line plus a smoothed line.

    ``steps`` are the x values shared by every series. Writes a PNG to ``path`` and returns it.
    """
    names = list(series)
    if not names or not steps:
        raise ValueError("nothing to plot: need at least one series and one step")
    panel_w, panel_h = size
    margin_left, margin_right, margin_top, margin_bottom = 80, 20, 34, 42
    header = 28 if title else 0
    image = Image.new("RGB", (panel_w, header + panel_h * len(names)), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    if title:
        draw.text((margin_left, 8), title, fill="black", font=font)
    x_min, x_max = float(min(steps)), float(max(steps))
    x_span = (x_max - x_min) or 1.0
    for index, name in enumerate(names):
        values = [float(v) for v in series[name]]
        finite = [v for v in values if math.isfinite(v)]
        top = header + index * panel_h
        box = (margin_left, top + margin_top, panel_w - margin_right, top + panel_h - margin_bottom)
        draw.rectangle(box, outline=(90, 90, 90))
        colour = PALETTE[index % len(PALETTE)]
        draw.text((margin_left, top + 10), name, fill=colour, font=font)
        if not finite:
            continue
        # Scale to the bulk of the curve: a few early spikes would otherwise flatten everything else.
        ordered = sorted(finite)
        y_low, y_high = ordered[0], ordered[min(len(ordered) - 1, int(0.98 * len(ordered)))]
        if y_high == y_low:
            y_low, y_high = y_low - 0.5 * (abs(y_low) or 1), y_high + 0.5 * (abs(y_high) or 1)
        y_span = y_high - y_low

        def to_px(
            x: float, y: float, box: tuple[int, int, int, int] = box, lo: float = y_low, span: float = y_span
        ) -> tuple[float, float]:
            left, upper, right, lower = box
            return (
                left + (x - x_min) / x_span * (right - left),
                lower - (y - lo) / span * (lower - upper),
            )

        for tick in _nice_ticks(y_low, y_high):
            _, ty = to_px(x_min, tick)
            draw.line((box[0], ty, box[2], ty), fill=(232, 232, 232))
            draw.text((6, ty - 6), _fmt(tick), fill="black", font=font)
        for tick in _nice_ticks(x_min, x_max):
            tx, _ = to_px(tick, y_low)
            draw.line((tx, box[3], tx, box[3] + 4), fill="black")
            draw.text((tx - 12, box[3] + 8), _fmt(tick), fill="black", font=font)
        draw.text(((box[0] + box[2]) // 2 - 20, box[3] + 24), x_label, fill="black", font=font)
        points = [to_px(float(x), min(y, y_high)) for x, y in zip(steps, values, strict=True) if math.isfinite(y)]
        light = tuple(int(c + (255 - c) * 0.65) for c in colour)
        if len(points) > 1:
            draw.line(points, fill=light, width=1)
        if smooth > 1 and len(finite) > 1:
            smoothed = moving_average(finite, smooth)
            xs = [float(x) for x, y in zip(steps, values, strict=True) if math.isfinite(y)]
            draw.line([to_px(x, min(y, y_high)) for x, y in zip(xs, smoothed, strict=True)], fill=colour, width=2)
        else:
            draw.line(points, fill=colour, width=2) if len(points) > 1 else draw.point(points, fill=colour)
    return save_png(image, path)


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
