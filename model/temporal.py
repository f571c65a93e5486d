"""Temporal consistency of frame-by-frame video stylization (paper Table 3): optical-flow warping error.

The flow is computed on the *original* frames with OpenCV's DIS optical flow; pixels where the forward and
backward flows disagree (occlusions, flow failures) are masked out with the usual forward-backward check
|f + b(x + f)|^2 < 0.01 (|f|^2 + |b(x + f)|^2) + 0.5. The error of a frame pair is the mean over the
valid pixels of the squared RGB difference between stylized frame t and stylized frame t+1 warped to t.

Needs the optional ``eval`` extra (opencv-python-headless + numpy); importing this module without them
raises ImportError with an explanation.
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
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "temporal consistency needs the 'eval' extra: pip install 'stya2k-serve[eval]' "
        "(opencv-python-headless, numpy)"
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


def warp(image: Tensor, flow: Tensor) -> Tensor:
    """Sample ``image`` (C, H, W) at x + flow(x): brings frame t+1 back onto frame t's pixel grid."""
    _, height, width = image.shape
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    x = (xs + flow[0]) / max(width - 1, 1) * 2 - 1
    y = (ys + flow[1]) / max(height - 1, 1) * 2 - 1
    grid = torch.stack((x, y), dim=-1)[None]  # (1, H, W, 2)
    return F.grid_sample(image[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=True)[0]


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
