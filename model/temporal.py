"""Temporal consistency of frame-by-frame video stylization (paper Table 3): optical-flow warping error.

The flow is computed on the *original* frames with OpenCV's DIS optical flow; pixels where the forward and
backward flows disagree (occlusions, flow failures) are masked out with the usual forward-backward check
|f + b(x + f)|^2 < 0.01 (|f|^2 + |b(x + f)|^2) + 0.5. The error of a frame pair is the mean over the
valid pixels of the squared RGB difference between stylized frame t and stylized frame t+1 warped to t.

:class:`TemporalSmoother` is the training-free remedy (issue 20): it blends each stylized frame with the
previous smoothed output warped along the same DIS flow, where the flow can be trusted.

Needs opencv-python-headless + numpy (main dependencies since video smoothing); importing this module without
them raises ImportError with an explanation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

try:
    import cv2
    import numpy as np
except ImportError as exc:  # pragma: no cover - exercised only in an install that skipped the dependencies
    raise ImportError(
        "optical flow (the warping-error metric, video smoothing) needs OpenCV and numpy, dependencies of "
        "stya2k-serve: pip install opencv-python-headless==5.0.0.93 numpy==2.4.6"
    ) from exc


@dataclass(frozen=True)
class FlowPair:
    forward: Tensor  # (2, H, W) pixel displacement (dx, dy) from frame t to t+1
    valid: Tensor  # (H, W) bool, True where forward and backward flows agree


def _gray_u8(frame: Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W) uint8 luma for OpenCV."""
    rgb = frame.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    return cv2.cvtColor(rgb.numpy(), cv2.COLOR_RGB2GRAY)


def dis_flow(a: Tensor, b: Tensor) -> Tensor:
    """Dense flow from frame a to frame b (both (3, H, W) in [0, 1]) -> (2, H, W) (dx, dy) in pixels."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flow = dis.calc(_gray_u8(a), _gray_u8(b), None)  # (H, W, 2) float32
    return torch.from_numpy(np.ascontiguousarray(flow)).permute(2, 0, 1).float()


def warp(image: Tensor, flow: Tensor, mode: str = "bilinear") -> Tensor:
    """Sample ``image`` (C, H, W) at x + flow(x): brings frame t+1 back onto frame t's pixel grid.

    ``mode``: grid_sample's interpolation; bicubic blurs less when an image is warped again and again (the
    smoother's recursion) but overshoots, so clamp its result.
    """
    _, height, width = image.shape
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    x = (xs + flow[0]) / max(width - 1, 1) * 2 - 1
    y = (ys + flow[1]) / max(height - 1, 1) * 2 - 1
    grid = torch.stack((x, y), dim=-1)[None]  # (1, H, W, 2)
    return F.grid_sample(image[None].float(), grid, mode=mode, padding_mode="border", align_corners=True)[0]


def flow_with_occlusion(a: Tensor, b: Tensor) -> FlowPair:
    """Forward flow a->b plus the forward-backward consistency mask (also drops flow leaving the frame)."""
    forward, backward = dis_flow(a, b), dis_flow(b, a)
    backward_at_target = warp(backward, forward)  # (2, H, W): b(x + f(x))
    mismatch = (forward + backward_at_target).pow(2).sum(0)
    magnitude = forward.pow(2).sum(0) + backward_at_target.pow(2).sum(0)
    valid = mismatch < 0.01 * magnitude + 0.5
    _, height, width = a.shape
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    tx, ty = xs + forward[0], ys + forward[1]
    inside = (tx >= 0) & (tx <= width - 1) & (ty >= 0) & (ty <= height - 1)
    return FlowPair(forward=forward, valid=valid & inside)


def warping_error(stylized: Sequence[Tensor], flows: Sequence[FlowPair]) -> float:
    """Mean over consecutive pairs of the masked mean squared RGB error (values on the [0, 1] scale)."""
    if len(stylized) != len(flows) + 1 or not flows:
        raise ValueError("need N >= 2 stylized frames and N-1 flows")
    errors = []
    for t, pair in enumerate(flows):
        warped = warp(stylized[t + 1], pair.forward)  # (3, H, W)
        diff = (stylized[t].float() - warped).pow(2).sum(0)  # (H, W)
        valid = pair.valid
        errors.append(float(diff[valid].mean()) if valid.any() else float("nan"))
    finite = [e for e in errors if e == e]
    return sum(finite) / len(finite) if finite else float("nan")


def static_flicker(outputs: Sequence[Tensor], frames: Sequence[Tensor],
                   threshold: float = 2 / 255) -> tuple[float, float]:
    """Flow-free flicker: (mean |out_t - out_{t-1}| over static pixels, share of static pixels).

    A pixel is static for the pair (t-1, t) when no content channel changed by ``threshold`` or more; there the
    output should not change either, so any change is flicker, measured without optical flow (the warping error
    uses the same DIS flow as :class:`TemporalSmoother`, this number does not). Values on the [0, 1] scale,
    averaged over RGB, over the static pixels of each pair, then over the pairs that have any.
    """
    if len(outputs) != len(frames) or len(frames) < 2:
        raise ValueError("need N >= 2 outputs and as many content frames")
    values, shares = [], []
    for t in range(1, len(frames)):
        static = (frames[t].float() - frames[t - 1].float()).abs().amax(0) < threshold  # (H, W)
        shares.append(float(static.float().mean()))
        if static.any():
            change = (outputs[t].float() - outputs[t - 1].float()).abs().mean(0)  # (H, W)
            values.append(float(change[static].mean()))
    return (sum(values) / len(values) if values else float("nan")), sum(shares) / len(shares)


def clip_warping_error(frames: Sequence[Tensor], stylize: Callable[[Tensor], Tensor]) -> dict[str, float]:
    """Stylize each (3, H, W) frame independently and measure the warping error of the result.

    Also reports the same error for the unstylized frames: the floor that flow errors alone produce.
    """
    flows = [flow_with_occlusion(frames[t], frames[t + 1]) for t in range(len(frames) - 1)]
    stylized = [stylize(frame) for frame in frames]
    return {
        "warping_error": warping_error(stylized, flows),
        "input_warping_error": warping_error(list(frames), flows),
        "valid_fraction": sum(float(p.valid.float().mean()) for p in flows) / len(flows),
        "frames": float(len(frames)),
    }


# ---------------------------------------------------------------------------------------------- smoothing
MAX_STRENGTH = 0.95  # at 1 the first frame would be kept forever wherever the flow holds
# The motion-compensated content residual (mean |RGB| of frame t minus frame t-1 warped onto t) of a trusted
# pixel: JPEG noise and interpolation stay below ~8/255 on the ../shared clips (99th percentile), a wrong flow
# or a (dis)occlusion the forward-backward check missed shows up above it. Trust falls linearly between the two.
RESIDUAL_FULL_TRUST = 8 / 255
RESIDUAL_NO_TRUST = 24 / 255
# Below this share of trusted pixels the frame is not blended at all and the recursion restarts from it: a scene
# cut (about 1% of pixels pass between two unrelated frames) or a flow failure.
MIN_TRUSTED_FRACTION = 0.3
# The previous output is warped again at every frame: bilinear sampling would blur the recursion's history
# (sharpness ratio 0.88 vs 0.95 at strength 0.7 on the fox clip, docs/QUALITY.md); bicubic keeps the texture.
WARP_MODE = "bicubic"


def _soft_mask(trust: Tensor) -> Tensor:
    """(H, W) trust in [0, 1] -> (H, W) blending weight: eroded by 1 px, then a 3x3 box blur.

    The blur removes hard seams between blended and fresh pixels; the erosion first makes sure it never leaks
    into an untrusted pixel (every pixel of its 3x3 neighbourhood is eroded to 0), so occlusions stay fresh.
    """
    t = trust[None, None]  # (1, 1, H, W)
    eroded = -F.max_pool2d(-t, kernel_size=3, stride=1, padding=1)  # max_pool pads with -inf: borders not eroded
    return F.avg_pool2d(eroded, kernel_size=3, stride=1, padding=1, count_include_pad=False)[0, 0]


def _check_frame(frame: Tensor, what: str) -> None:
    if frame.dim() != 3 or frame.shape[0] != 3 or not frame.is_floating_point():
        raise ValueError(f"{what} must be a float (3, H, W) tensor, got {frame.dtype} {tuple(frame.shape)}")


class TemporalSmoother:
    """Training-free flicker reduction for frame-by-frame stylization, recursive along motion trajectories.

    Each frame is stylized independently, so small content changes move the texture around (flicker). For frame t
    the smoother computes the backward flow content t -> t-1 (DIS, with the forward-backward occlusion check of
    :func:`flow_with_occlusion`), warps its previous *smoothed* output onto frame t and blends:

        out = stylized + strength * w * (warped_prev - stylized)

    with w in [0, 1] per pixel: 0 where the flow check fails or leaves the frame (occlusions, new content: those
    pixels are the fresh stylization, no ghosts), falling from 1 to 0 as the motion-compensated content residual
    rises from 8/255 to 24/255 (flow errors the check missed), softened at its edges (:func:`_soft_mask`). Because
    the previous output is itself smoothed, the result is an exponential moving average along the flow with an
    effective length of about 1 / (1 - strength) frames. When fewer than 30% of the pixels are trusted (a scene
    cut, a flow failure) the frame is returned unblended and the recursion restarts from it.

    Cost: one DIS pair (forward and backward) per frame plus a few warps: 27-56 ms per frame at a 256 px short
    side on the 2-core CPU VM, 3-4% of the stylization (docs/QUALITY.md, "Video"). ``strength`` 0 is off: no
    flow is computed and ``step`` returns the stylized frame itself. Otherwise the work and the output are on the
    CPU (OpenCV's flow), whatever the inputs' device.
    """

    def __init__(self, strength: float) -> None:
        strength = float(strength)
        if not 0.0 <= strength <= MAX_STRENGTH:  # also refuses NaN
            raise ValueError(f"temporal smoothing strength must be in [0, {MAX_STRENGTH}] (0 = off), got {strength}")
        self.strength = strength
        self._shape: torch.Size | None = None
        self._prev_content: Tensor | None = None  # (3, H, W) content of frame t-1
        self._prev_output: Tensor | None = None  # (3, H, W) smoothed output of frame t-1
        self.last_trusted_fraction: float | None = None  # share of pixels with w > 0 at the last step (diagnostics)
        self.last_cut = False  # the last step found too few trusted pixels and did not blend

    def reset(self) -> None:
        """Forget the previous frame (a new clip, or a cut known from elsewhere); the frame size may change."""
        self._shape = None
        self._prev_content = self._prev_output = None
        self.last_trusted_fraction = None
        self.last_cut = False

    def step(self, content: Tensor, stylized: Tensor) -> Tensor:
        """Frame t's content and its independent stylization, both (3, H, W) in [0, 1] -> (3, H, W) in [0, 1].

        Raises ValueError for a malformed frame or a frame size other than the previous frames' (call
        :meth:`reset` between clips).
        """
        _check_frame(content, "content")
        _check_frame(stylized, "stylized")
        if content.shape != stylized.shape:
            raise ValueError(f"content {tuple(content.shape)} and stylized {tuple(stylized.shape)} differ in size")
        if self._shape is not None and content.shape != self._shape:
            raise ValueError(f"frame size changed from {tuple(self._shape)} to {tuple(content.shape)}; "
                             "call reset() between clips")
        self._shape = content.shape
        if self.strength == 0.0:
            return stylized
        content = content.detach().cpu().float().clamp(0, 1)  # (3, H, W), a copy we may keep
        fresh = stylized.detach().cpu().float().clamp(0, 1)  # (3, H, W)
        if self._prev_content is None or self._prev_output is None:
            return self._remember(content, fresh, trusted=None, cut=False)
        pair = flow_with_occlusion(content, self._prev_content)  # flow t -> t-1 on frame t's grid
        warped = warp(torch.cat([self._prev_output, self._prev_content]), pair.forward, WARP_MODE)  # (6, H, W)
        warped_output, warped_content = warped[:3], warped[3:]
        residual = (content - warped_content).abs().mean(0)  # (H, W)
        trust = ((RESIDUAL_NO_TRUST - residual) / (RESIDUAL_NO_TRUST - RESIDUAL_FULL_TRUST)).clamp(0, 1)
        trust = trust * pair.valid  # (H, W)
        trusted = float((trust > 0).float().mean())
        if trusted < MIN_TRUSTED_FRACTION:
            return self._remember(content, fresh, trusted=trusted, cut=True)
        weight = self.strength * _soft_mask(trust)  # (H, W)
        out = (fresh + weight * (warped_output - fresh)).clamp(0, 1)  # (3, H, W)
        return self._remember(content, out, trusted=trusted, cut=False)

    def _remember(self, content: Tensor, out: Tensor, trusted: float | None, cut: bool) -> Tensor:
        self._prev_content, self._prev_output = content, out.clone()  # the caller may write into ``out``
        self.last_trusted_fraction, self.last_cut = trusted, cut
        return out
