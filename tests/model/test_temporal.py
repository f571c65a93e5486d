"""Temporal warping error: flow, occlusion mask and error on synthetic moving frames (needs the eval extra)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("cv2", reason="opencv-python-headless (eval extra) not installed")
pytest.importorskip("numpy", reason="numpy (eval extra) not installed")

from model.temporal import clip_warping_error, dis_flow, flow_with_occlusion, warp, warping_error


def _scene(shift: int) -> torch.Tensor:
    """A smooth textured scene translated right by ``shift`` pixels: (3, 64, 80)."""
    gen = torch.Generator().manual_seed(0)
    big = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 16, generator=gen), size=(64, 120), mode="bicubic")[0]
    return big[:, :, 20 - shift : 100 - shift].clamp(0, 1).contiguous()


def test_dis_flow_recovers_a_translation() -> None:
    flow = dis_flow(_scene(0), _scene(3))  # content moves right by 3 px
    centre = flow[:, 16:48, 20:60]
    assert centre[0].median() == pytest.approx(3.0, abs=0.5)
    assert centre[1].median().abs() < 0.5


def test_warp_with_true_flow_aligns_frames_and_mask_excludes_borders() -> None:
    a, b = _scene(0), _scene(3)
    pair = flow_with_occlusion(a, b)
    aligned = warp(b, pair.forward)
    err = (aligned - a).pow(2).sum(0)[pair.valid].mean()
    assert err < 0.01
    assert pair.valid.float().mean() > 0.7


def test_flicker_raises_the_warping_error() -> None:
    frames = [_scene(s) for s in range(4)]
    steady = clip_warping_error(frames, lambda f: f)
    gen = torch.Generator().manual_seed(1)
    flickering = clip_warping_error(frames, lambda f: (f + 0.2 * torch.rand(f.shape, generator=gen)).clamp(0, 1))
    assert flickering["warping_error"] > 5 * steady["warping_error"]
    with pytest.raises(ValueError):
        warping_error(frames[:1], [])
