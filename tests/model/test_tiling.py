"""Tiled inference: the tiles cover the image, the blend weights sum to 1, the whole-image statistics equal the
untiled pass's, and the tiled output matches the untiled one within the issue's bounds."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from model import ModelConfig, StyA2K
from model import functional as fn
from model.stya2k import pad_image
from model.tiling import GRID, TileConfig, TiledStylizer, plan, ramp, spans, stylize_tiled


@pytest.fixture(scope="module")
def net() -> StyA2K:
    torch.manual_seed(0)
    return StyA2K(ModelConfig()).eval()


def smooth_image(height: int, width: int, seed: int) -> torch.Tensor:
    """Photo-like content: blurred noise (no pixel-level noise that only the margins would decide)."""
    noise = torch.rand(1, 3, height // 8 + 1, width // 8 + 1, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(noise, size=(height, width), mode="bilinear", align_corners=False)  # (1, 3, H, W)


@pytest.mark.parametrize("size", [64, 100, 191, 256, 300])
def test_spans_cover_the_axis_on_the_block_grid(size: int) -> None:
    cfg = TileConfig(tile=64, margin=64, blend=16)
    parts = spans(size, cfg)
    assert parts[0].start == 0 and parts[-1].stop == size
    for left, right in itertools.pairwise(parts):
        assert left.stop == right.start
    for part in parts:
        assert part.lo % GRID == 0 and part.lo <= part.start and part.hi >= part.stop
        assert part.hi == size or part.hi % GRID == 0


def test_blend_weights_sum_to_one_everywhere() -> None:
    cfg = TileConfig(tile=64, margin=64, blend=24)
    height, width = 200, 150
    total = torch.zeros(height, width)
    for tile in plan(height, width, cfg):
        wy = ramp(tile.rows, height, cfg.blend, torch.device("cpu"))[:, None]
        wx = ramp(tile.cols, width, cfg.blend, torch.device("cpu"))[None, :]
        total[tile.rows.lo:tile.rows.hi, tile.cols.lo:tile.cols.hi] += wy * wx
    assert torch.allclose(total, torch.ones(height, width), atol=1e-6)


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="multiples"):
        TileConfig(tile=100)
    with pytest.raises(ValueError, match="blend"):
        TileConfig(tile=64, margin=64, blend=65)


def test_whole_image_statistics_equal_the_untiled_pass(net: StyA2K) -> None:
    content = smooth_image(392, 264, seed=1)  # 4 x 3 tiles: the inner ones see only their margin of context
    style = net.encode_style(torch.rand(1, 3, 64, 64))
    tiled = TiledStylizer(net, content, [style], None, 1.0, TileConfig(128, 128, 16), torch.device("cpu"))
    with torch.no_grad():
        for step in list(tiled.steps())[: len(tiled.tiles)]:  # the statistics pass only
            step()
        padded, _ = pad_image(content)
        untiled = net.encoder(padded, net.taps)
    assert tiled.stats is not None and set(tiled.stats) == set(net.taps)
    for tap, feat in untiled.items():
        mean, std = fn.calc_mean_std(feat)
        # Equal up to what the margin leaves out of relu5_1's receptive field at the tiles' far edges.
        assert torch.allclose(tiled.stats[tap][0], mean, rtol=1e-3, atol=1e-4), tap
        assert torch.allclose(tiled.stats[tap][1], std, rtol=1e-3, atol=1e-4), tap


@pytest.mark.parametrize(("height", "width", "mode"), [(256, 192, "stylize"), (200, 264, "multistyle")])
def test_tiled_output_matches_the_untiled_one(net: StyA2K, height: int, width: int, mode: str) -> None:
    content = smooth_image(height, width, seed=2)
    styles = [net.encode_style(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(s))) for s in (3, 4)]
    weights = None
    if mode == "multistyle":
        weights = torch.zeros(1, 2, height, width)
        weights[:, 0, :, : width // 2] = 1
        weights[:, 1, :, width // 2 :] = 1
    else:
        styles = styles[:1]
    with torch.no_grad():
        untiled = net.stylize_from_features(content, styles, weights, 0.8)
        tiled = stylize_tiled(net, content, styles, weights, 0.8, TileConfig(tile=128, margin=128, blend=16))
    diff = (untiled - tiled).abs().flatten() * 255
    assert tiled.shape == untiled.shape
    assert diff.mean() <= 1.0 and diff.quantile(0.99) <= 8.0, (diff.mean(), diff.quantile(0.99))


def test_whole_image_statistics_beat_per_tile_ones(net: StyA2K) -> None:
    """Why the statistics pass exists: tiles normalised by their own statistics drift from the untiled output."""
    content = smooth_image(256, 256, seed=5)
    content[:, :, :128] *= 0.3  # a dark top half: its statistics differ from the whole image's
    style = [net.encode_style(torch.rand(1, 3, 64, 64))]
    cfg = TileConfig(128, 64, 16)
    with torch.no_grad():
        untiled = net.stylize_from_features(content, style)
        whole = TiledStylizer(net, content, style, None, 1.0, cfg, torch.device("cpu")).run()
        per_tile = TiledStylizer(net, content, style, None, 1.0, cfg, torch.device("cpu"))
        steps = list(per_tile.steps())
        for step in steps[: len(per_tile.tiles)]:
            step()
        per_tile.stats = {}  # each tile falls back to its own statistics
        for step in steps[len(per_tile.tiles) :]:
            step()
    assert (whole - untiled).abs().mean() < 0.5 * (per_tile.result() - untiled).abs().mean()


def test_incomplete_run_refuses_a_result(net: StyA2K) -> None:
    tiled = TiledStylizer(net, smooth_image(128, 128, 6), [net.encode_style(torch.rand(1, 3, 32, 32))], None, 1.0,
                          TileConfig(64, 64, 16), torch.device("cpu"))
    assert tiled.total == 2 * len(tiled.tiles) == 8
    with pytest.raises(RuntimeError, match="incomplete"):
        tiled.result()
