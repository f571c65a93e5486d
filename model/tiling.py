"""Tiled inference: any image size in bounded memory, with the untiled result.

The content is cut into tiles aligned to the coarsest attention block grid (64 px: relu4_1's 8x8 blocks at
stride 8, relu5_1's 4x4 at stride 16), each computed with a margin of context around the part it owns. Two things
keep the tiles from differing from one untiled pass:

1. A2K normalises the content features per channel over the whole image (``mean_variance_norm``). A first pass
   runs the encoder tile by tile and accumulates each attention tap's per-channel sum and sum of squares over the
   positions each tile owns; the second pass normalises every tile with those whole-image statistics.
2. Content blocks of the progressive branch are matched one by one, so on the same block grid a tile sees the
   same blocks; the receptive field of the convolutions is covered by the margin, and neighbouring tiles are
   blended linearly over a band around their shared edge (the weights of each pixel sum to 1).

Memory holds the whole image (input, output) plus one tile's activations: O(tile^2), not O(side^2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from model import functional as fn
from model.encoder import TAP_BY_NAME
from model.stya2k import MIN_PADDED_SIDE, SIZE_MULTIPLE, StyA2K, StyleFeatures, pad_image

GRID = 64  # px: the coarsest A2K block (relu4_1: 8 x stride 8; relu5_1: 4 x stride 16); tiles start on it


class FeatureNetwork(Protocol):
    """What a tiled transfer needs of the network: its encoder and a transfer that takes whole-image statistics
    (:class:`StyA2K` itself, or a backend's exported graphs: service/backends)."""

    taps: tuple[str, ...]

    def encoder(self, x: Tensor, taps: Sequence[str]) -> dict[str, Tensor]: ...

    def stylize_from_features(self, content: Tensor, styles: Sequence[StyleFeatures], weights: Tensor | None = None,
                              alpha: float | Tensor = 1.0,
                              content_stats: dict[str, fn.Stats] | None = None) -> Tensor: ...


@dataclass(frozen=True)
class TileConfig:
    """Tile geometry in image pixels (``tile`` and ``margin`` are multiples of ``GRID``)."""

    tile: int = 512  # side of the square each tile owns
    margin: int = 128  # context computed around it and thrown away (the convolutions' receptive field)
    blend: int = 32  # half-width of the band over which two neighbours are cross-faded (<= margin)

    def __post_init__(self) -> None:
        if self.tile <= 0 or self.tile % GRID or self.margin < 0 or self.margin % GRID:
            raise ValueError(f"tile ({self.tile}) and margin ({self.margin}) must be multiples of {GRID} px")
        if not 0 <= self.blend <= min(self.margin, self.tile // 2):
            raise ValueError(f"blend ({self.blend}) must lie in 0..min(margin, tile / 2)")


@dataclass(frozen=True)
class Span:
    """One axis of a tile: it owns [start, stop) and computes [lo, hi) (the owned part plus margins)."""

    start: int
    stop: int
    lo: int
    hi: int


@dataclass(frozen=True)
class Tile:
    rows: Span
    cols: Span


def spans(size: int, cfg: TileConfig) -> list[Span]:
    """Cut one axis of ``size`` px into owned parts of ``cfg.tile`` px with their computed ranges."""
    count = max(1, math.ceil(size / cfg.tile))
    out = []
    for index in range(count):
        start, stop = index * cfg.tile, min(size, (index + 1) * cfg.tile)
        out.append(Span(start, stop, max(0, start - cfg.margin), min(size, stop + cfg.margin)))
    return out


def plan(height: int, width: int, cfg: TileConfig) -> list[Tile]:
    """Tiles in row-major order covering a ``height`` x ``width`` image."""
    return [Tile(r, c) for r in spans(height, cfg) for c in spans(width, cfg)]


def needs_tiling(height: int, width: int, cfg: TileConfig) -> bool:
    return height > cfg.tile or width > cfg.tile


def ramp(span: Span, size: int, blend: int, device: torch.device) -> Tensor:
    """Blend weights along one axis over [lo, hi): 1 inside the owned part, linear cross-fades of width
    2 * blend centred on each edge shared with a neighbour (so neighbours' weights sum to 1), 0 elsewhere."""
    position = torch.arange(span.lo, span.hi, device=device, dtype=torch.float32) + 0.5  # pixel centres
    weight = torch.ones_like(position)
    if blend == 0:
        return ((position >= span.start) & (position < span.stop)).float()
    if span.start > 0:
        weight = torch.minimum(weight, ((position - (span.start - blend)) / (2 * blend)).clamp(0, 1))
    if span.stop < size:
        weight = torch.minimum(weight, (((span.stop + blend) - position) / (2 * blend)).clamp(0, 1))
    return weight  # (hi - lo,)


class TiledStylizer:
    """One tiled transfer, as a list of steps (each one tile's encoder pass or full pass), so a caller can run
    them one at a time (the service interleaves them with other requests and reports progress).

    content: (1, 3, H, W) in [0, 1] on the CPU; styles: N StyleFeatures of batch 1 on ``device``; weights: None,
    (1, N) or (1, N, H, W) on the CPU; alpha: float. ``context`` wraps every step (inference mode, autocast).
    """

    def __init__(self, net: FeatureNetwork, content: Tensor, styles: Sequence[StyleFeatures], weights: Tensor | None,
                 alpha: float, cfg: TileConfig, device: torch.device,
                 context: Callable[[], AbstractContextManager[Any]] | None = None) -> None:
        if content.dim() != 4 or content.shape[0] != 1:
            raise ValueError(f"tiled transfer takes one image (1, 3, H, W), got {tuple(content.shape)}")
        self.net, self.content, self.styles = net, content, list(styles)
        self.weights, self.alpha, self.cfg, self.device = weights, alpha, cfg, device
        self.context = context or torch.inference_mode
        self.height, self.width = int(content.shape[2]), int(content.shape[3])
        self.tiles = plan(self.height, self.width, cfg)
        # Whole-image statistics, accumulated over the padded image the untiled pass would see.
        self.padded_size = _padded_size(self.height, self.width)
        self._sums: dict[str, tuple[Tensor, Tensor]] = {}
        self.stats: dict[str, fn.Stats] | None = None
        self.output = torch.zeros(1, 3, self.height, self.width)  # (1, 3, H, W) float32, blended tiles
        self.done = 0

    @property
    def total(self) -> int:
        return 2 * len(self.tiles)

    def steps(self) -> Iterator[Callable[[], None]]:
        """Statistics pass over every tile, then the transfer pass: ``total`` steps."""
        for tile in self.tiles:
            yield lambda tile=tile: self._run(self._accumulate, tile)
        yield from (lambda tile=tile: self._run(self._render, tile) for tile in self.tiles)

    def run(self) -> Tensor:
        """Every step in turn -> (1, 3, H, W) in [0, 1]."""
        for step in self.steps():
            step()
        return self.result()

    def result(self) -> Tensor:
        if self.done != self.total:
            raise RuntimeError(f"tiled transfer incomplete: {self.done} of {self.total} steps done")
        return self.output.clamp_(0, 1)

    # ----------------------------------------------------------------------------------------------- steps
    def _run(self, step: Callable[[Tile], None], tile: Tile) -> None:
        with self.context():
            step(tile)
        self.done += 1

    def _crop(self, tile: Tile) -> Tensor:
        rows, cols = tile.rows, tile.cols
        return self.content[:, :, rows.lo:rows.hi, cols.lo:cols.hi].to(self.device)  # (1, 3, h, w)

    def _accumulate(self, tile: Tile) -> None:
        padded, _ = pad_image(self._crop(tile))
        feats = self.net.encoder(padded, self.net.taps)
        for tap, feat in feats.items():
            owned = self._owned(feat, tile, TAP_BY_NAME[tap].stride)  # (1, C, h', w')
            flat = owned.double().flatten(2)  # (1, C, n)
            total, squares = self._sums.get(tap, (0, 0))
            self._sums[tap] = (flat.sum(dim=2) + total, (flat * flat).sum(dim=2) + squares)  # each (1, C)
        if self.done + 1 == len(self.tiles):
            self.finish_statistics()

    def finish_statistics(self) -> None:
        """Whole-image statistics from the tiles accumulated so far (the last statistics step calls it; a
        benchmark that runs only some tiles may call it early)."""
        self.stats = {tap: self._finish(tap) for tap in self._sums}

    def _owned(self, feat: Tensor, tile: Tile, stride: int) -> Tensor:
        """The positions of a tile's feature map that its owned part covers, in the padded image's grid:
        the last tile of a row or column also owns the padding that the untiled pass adds at the image's end."""
        rows, cols = tile.rows, tile.cols
        row_stop = self.padded_size[0] if rows.stop == self.height else rows.stop
        col_stop = self.padded_size[1] if cols.stop == self.width else cols.stop
        return feat[:, :, (rows.start - rows.lo) // stride:(row_stop - rows.lo) // stride,
                    (cols.start - cols.lo) // stride:(col_stop - cols.lo) // stride]

    def _finish(self, tap: str) -> fn.Stats:
        """Whole-image (mean, std) of one tap, as ``fn.calc_mean_std`` computes them (unbiased variance + eps)."""
        total, squares = self._sums[tap]  # each (1, C) float64
        stride = TAP_BY_NAME[tap].stride
        count = (self.padded_size[0] // stride) * (self.padded_size[1] // stride)
        mean = total / count
        var = (squares - total * mean) / max(1, count - 1) + fn.MVN_EPS
        return mean.float().view(1, -1, 1, 1).to(self.device), var.sqrt().float().view(1, -1, 1, 1).to(self.device)

    def _render(self, tile: Tile) -> None:
        if self.stats is None:
            raise RuntimeError("the statistics pass must run before the transfer pass")
        rows, cols = tile.rows, tile.cols
        weights = self.weights
        if weights is not None and weights.dim() == 4:
            weights = weights[:, :, rows.lo:rows.hi, cols.lo:cols.hi]
        if weights is not None:
            weights = weights.to(self.device)
        out = self.net.stylize_from_features(self._crop(tile), self.styles, weights, self.alpha,
                                             content_stats=self.stats).float()  # (1, 3, h, w)
        blend = self.cfg.blend
        wy = ramp(rows, self.height, blend, out.device)[:, None]  # (h, 1)
        wx = ramp(cols, self.width, blend, out.device)[None, :]  # (1, w)
        self.output[:, :, rows.lo:rows.hi, cols.lo:cols.hi] += (out * (wy * wx)).cpu()


def _padded_size(height: int, width: int) -> tuple[int, int]:
    """The size ``pad_image`` gives the whole image (for images at least MIN_PADDED_SIDE on each side)."""
    def up(side: int) -> int:
        return max(MIN_PADDED_SIDE, side + (-side) % SIZE_MULTIPLE)

    return up(height), up(width)


def stylize_tiled(net: StyA2K, content: Tensor, styles: Sequence[StyleFeatures], weights: Tensor | None = None,
                  alpha: float = 1.0, cfg: TileConfig | None = None) -> Tensor:
    """`StyA2K.stylize_from_features` for one image of any size, tile by tile -> (1, 3, H, W) in [0, 1]."""
    device = next(net.parameters()).device
    return TiledStylizer(net, content, styles, weights, alpha, cfg or TileConfig(), device).run()
