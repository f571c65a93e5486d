"""Temporal warping error: flow, occlusion mask and error on synthetic moving frames (needs the eval extra)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("cv2", reason="opencv-python-headless (eval extra) not installed")
pytest.importorskip("numpy", reason="numpy (eval extra) not installed")

from model.temporal import (
    TemporalSmoother,
    clip_warping_error,
    dis_flow,
    flow_with_occlusion,
    static_flicker,
    warp,
    warping_error,
)


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


# ---------------------------------------------------------------------------------------------- smoothing


def _noisy(frame: torch.Tensor, gen: torch.Generator, amount: float = 0.15) -> torch.Tensor:
    """A flickering 'stylization': the frame plus fresh noise every frame (what independent stylization does)."""
    return (frame + amount * (torch.rand(frame.shape, generator=gen) - 0.5)).clamp(0, 1)


def _smooth(strength: float, frames: list[torch.Tensor], stylized: list[torch.Tensor]) -> list[torch.Tensor]:
    smoother = TemporalSmoother(strength)
    return [smoother.step(f, s) for f, s in zip(frames, stylized, strict=True)]


def test_strength_zero_returns_the_stylized_frame_unchanged() -> None:
    gen = torch.Generator().manual_seed(2)
    smoother = TemporalSmoother(0)
    for shift in range(3):
        frame = _scene(shift)
        stylized = _noisy(frame, gen)
        out = smoother.step(frame, stylized)
        assert out is stylized
        assert smoother.last_trusted_fraction is None


def test_smoothing_lowers_the_warping_error_of_a_flickering_stylization() -> None:
    frames = [_scene(s) for s in range(0, 12, 2)]  # 6 frames moving right by 2 px each
    gen = torch.Generator().manual_seed(3)
    stylized = [_noisy(f, gen) for f in frames]
    flows = [flow_with_occlusion(frames[t], frames[t + 1]) for t in range(len(frames) - 1)]
    raw = warping_error(stylized, flows)
    errors = {s: warping_error(_smooth(s, frames, stylized), flows) for s in (0.3, 0.7)}
    assert errors[0.3] < 0.7 * raw
    assert errors[0.7] < 0.4 * raw
    assert errors[0.7] < errors[0.3]


def test_smoothing_lowers_the_flow_free_flicker_of_a_static_scene() -> None:
    frames = [_scene(0)] * 6
    gen = torch.Generator().manual_seed(4)
    stylized = [_noisy(f, gen) for f in frames]
    raw, share = static_flicker(stylized, frames)
    smoothed, _ = static_flicker(_smooth(0.7, frames, stylized), frames)
    assert share == 1.0
    assert smoothed < 0.5 * raw
    assert static_flicker(frames, frames) == (0.0, 1.0)


def test_a_scene_cut_is_not_blended_and_restarts_the_recursion() -> None:
    gen = torch.Generator().manual_seed(5)
    other = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 10, generator=gen), size=(64, 80),
                                            mode="bicubic")[0].clamp(0, 1)
    smoother = TemporalSmoother(0.9)
    for shift in range(3):
        smoother.step(_scene(shift), _noisy(_scene(shift), gen))
        assert not smoother.last_cut
    cut = _noisy(other, gen)
    out = smoother.step(other, cut)
    assert smoother.last_cut
    assert smoother.last_trusted_fraction is not None and smoother.last_trusted_fraction < 0.3
    assert torch.equal(out, cut)
    after = smoother.step(other, _noisy(other, gen))  # the same scene again: blends with the cut frame
    assert not smoother.last_cut
    assert (after - cut).abs().mean() < 0.5 * (_noisy(other, gen) - cut).abs().mean()


def test_new_content_at_the_border_is_the_fresh_stylization() -> None:
    """Pixels that came into view (their flow leaves the frame) take nothing from the previous output: no ghost."""
    smoother = TemporalSmoother(0.95)
    smoother.step(_scene(0), torch.zeros(3, 64, 80))
    out = smoother.step(_scene(3), torch.ones(3, 64, 80))  # content moved right: columns 0-2 are new
    assert torch.equal(out[:, :, :2], torch.ones(3, 64, 2))
    assert out[:, 16:48, 30:50].mean() < 0.2  # the interior, where the flow holds, is blended


def test_outputs_stay_finite_and_in_range() -> None:
    gen = torch.Generator().manual_seed(6)
    smoother = TemporalSmoother(0.95)
    for shift in range(5):
        stylized = _scene(shift) + 0.8 * (torch.rand(3, 64, 80, generator=gen) - 0.5)  # beyond [0, 1]
        out = smoother.step(_scene(shift), stylized)
        assert out.shape == (3, 64, 80) and out.dtype == torch.float32
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("strength", [-0.1, 0.96, 1.0, float("nan")])
def test_a_strength_outside_the_range_is_refused(strength: float) -> None:
    with pytest.raises(ValueError, match="strength"):
        TemporalSmoother(strength)


def test_frame_sizes_must_stay_constant_until_reset() -> None:
    smoother = TemporalSmoother(0.5)
    smoother.step(_scene(0), _scene(0))
    with pytest.raises(ValueError, match="frame size changed"):
        smoother.step(_scene(1)[:, :32], _scene(1)[:, :32])
    with pytest.raises(ValueError, match="differ"):
        smoother.step(_scene(1), _scene(1)[:, :32])
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        smoother.step(_scene(1)[0], _scene(1)[0])
    smoother.reset()
    out = smoother.step(_scene(1)[:, :32], _scene(1)[:, :32])  # a new clip may have another size
    assert out.shape == (3, 32, 80)
