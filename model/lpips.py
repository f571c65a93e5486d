"""LPIPS v0.1 (AlexNet) perceptual distance, implemented here from its published definition.

Weights are not shipped with the project (ImageNet-derived): they are read from a folder holding
``alexnet_features.pth`` (torchvision ``alexnet().features`` state dict, keys ``features.N.*``) and
``alex_linear_v0.1.pth`` (the five 1x1 linear heads ``lin{0..4}.model.1.weight``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

FEATURES_FILE = "alexnet_features.pth"
LINEAR_FILE = "alex_linear_v0.1.pth"
# The metric's fixed input scaling layer (applied to RGB in [-1, 1]).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# (in, out, kernel, stride, padding) of AlexNet's five convs; max-pools (3, 2) follow conv 1, 2 and 5.
ALEX_CONVS = ((3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1))
ALEX_POOL_BEFORE = (False, True, True, False, False)
# Indices of the convs in torchvision's ``alexnet().features`` sequential (names in the state dict).
TORCHVISION_CONV_INDEX = (0, 3, 6, 8, 10)


class LpipsError(RuntimeError):
    """Missing or malformed LPIPS weights."""


class AlexTaps(nn.Module):
    """AlexNet ``features`` up to the 5th ReLU, returning the 5 post-ReLU maps."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, stride=s, padding=p) for i, o, k, s, p in ALEX_CONVS)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> list[Tensor]:
        taps = []
        for conv, pool_first in zip(self.convs, ALEX_POOL_BEFORE, strict=True):
            if pool_first:
                x = self.pool(x)
            x = torch.relu(conv(x))
            taps.append(x)  # (B, C_l, H_l, W_l)
        return taps


def _unit_normalise(x: Tensor, eps: float = 1e-10) -> Tensor:
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """``LPIPS.from_folder(dir)(a, b)`` -> (B,) distances for images a, b (B, 3, H, W) RGB in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.net = AlexTaps()
        self.heads = nn.ParameterList(nn.Parameter(torch.zeros(1, o, 1, 1)) for _, o, *_ in ALEX_CONVS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_folder(cls, folder: str | Path) -> LPIPS:
        root = Path(folder)
        missing = [name for name in (FEATURES_FILE, LINEAR_FILE) if not (root / name).is_file()]
        if missing:
            raise LpipsError(f"LPIPS weights folder {root} lacks {', '.join(missing)}")
        metric = cls()
        features = torch.load(root / FEATURES_FILE, map_location="cpu", weights_only=True)
        linear = torch.load(root / LINEAR_FILE, map_location="cpu", weights_only=True)
        try:
            for conv, index in zip(metric.net.convs, TORCHVISION_CONV_INDEX, strict=True):
                prefix = f"features.{index}." if f"features.{index}.weight" in features else f"{index}."
                conv.weight.copy_(features[prefix + "weight"])
                conv.bias.copy_(features[prefix + "bias"])
            for layer, head in enumerate(metric.heads):
                head.copy_(linear[f"lin{layer}.model.1.weight"])
        except (KeyError, RuntimeError) as exc:
            raise LpipsError(f"malformed LPIPS weights in {root}: {exc}") from exc
        return metric

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """a, b: (B, 3, H, W) RGB in [0, 1], same size -> (B,) LPIPS distances."""
        if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 3:
            shapes = f"{tuple(a.shape)} and {tuple(b.shape)}"
            raise ValueError(f"LPIPS needs two (B, 3, H, W) batches of one shape, got {shapes}")
        taps_a = self.net((a * 2 - 1 - self.shift) / self.scale)
        taps_b = self.net((b * 2 - 1 - self.shift) / self.scale)
        total = torch.zeros(a.shape[0], device=a.device, dtype=torch.float32)
        for fa, fb, head in zip(taps_a, taps_b, self.heads, strict=True):
            diff = (_unit_normalise(fa) - _unit_normalise(fb)).pow(2)  # (B, C_l, H_l, W_l)
            total = total + (diff * head).sum(dim=1).mean(dim=(1, 2)).float()
        return total
