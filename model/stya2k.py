"""The StyA2K network (Figure 3): VGG encoder -> A2K at relu3_1, relu4_1, relu5_1 -> decoder.

Transfer and decoding are split at the feature level so that one code path serves single-style transfer,
style interpolation (a convex combination of transferred features, section 4.4) and spatial multi-style
(a soft mask per style): both are per-style weight maps applied to the transferred features of each layer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model import functional as fn
from model.a2k import A2K, AllToAll
from model.config import ATTENTION_TAPS, ModelConfig
from model.decoder import ConvLayer, Decoder, upsample2
from model.encoder import TAP_BY_NAME, VGGEncoder

# Content is padded to this multiple so every encoder tap halves exactly and decoder upsampling lands back on
# the same grid; 32 px is the smallest padded side whose deepest conv input (1/16) can still be
# reflection-padded. (Not the smallest image a caller may send: that limit is the service's, 16 px.)
SIZE_MULTIPLE = 16
MIN_PADDED_SIDE = 32


@dataclass
class StyleFeatures:
    """Encoded style features {tap: (B, C, h, w)}; cacheable and batchable (equal style sizes only)."""

    feats: dict[str, Tensor]

    def __len__(self) -> int:
        return next(iter(self.feats.values())).shape[0]

    def __getitem__(self, i: int) -> StyleFeatures:
        return StyleFeatures({k: v[i:i + 1] for k, v in self.feats.items()})

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.feats.values())

    def to(self, *args: Any, **kwargs: Any) -> StyleFeatures:
        return StyleFeatures({k: v.to(*args, **kwargs) for k, v in self.feats.items()})

    @property
    def padded_size(self) -> tuple[int, int]:
        """(H, W) of the padded style image these features were encoded from (:func:`padded_size`): features
        batch (:meth:`cat`) exactly when their padded sizes are equal."""
        tap, feat = next(iter(self.feats.items()))
        stride = TAP_BY_NAME[tap].stride  # every tap is the padded image / its stride, exactly (SIZE_MULTIPLE)
        return int(feat.shape[-2]) * stride, int(feat.shape[-1]) * stride

    @staticmethod
    def cat(items: Sequence[StyleFeatures]) -> StyleFeatures:
        if not items:
            raise ValueError("StyleFeatures.cat needs at least one item")
        shapes = {tuple(it.feats[k].shape[1:]) for it in items for k in it.feats}
        try:
            return StyleFeatures({k: torch.cat([it.feats[k] for it in items]) for k in items[0].feats})
        except RuntimeError as exc:
            raise ValueError(f"style features of different sizes cannot be batched: {sorted(shapes)}") from exc


def padded_size(height: int, width: int) -> tuple[int, int]:
    """The (H, W) that :func:`pad_image` makes of a ``height`` x ``width`` image."""

    def side(n: int) -> int:
        return -(-max(n, MIN_PADDED_SIDE) // SIZE_MULTIPLE) * SIZE_MULTIPLE

    return side(height), side(width)


def pad_image(x: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """Pad (B, 3, H, W) to at least MIN_PADDED_SIDE and a multiple of SIZE_MULTIPLE; returns original (H, W).

    A side under the minimum is first replicated up to it, whatever its pad (a second rule on purpose: it
    keeps the outputs of tiny images as they always were); then `fn.pad_to_multiple` applies the
    reflect-or-replicate rule."""
    h, w = x.shape[-2:]
    if min(h, w) < MIN_PADDED_SIDE:
        x = F.pad(x, (0, max(0, MIN_PADDED_SIDE - w), 0, max(0, MIN_PADDED_SIDE - h)), mode="replicate")
    padded, _ = fn.pad_to_multiple(x, SIZE_MULTIPLE)
    return padded, (h, w)


class Stages(Protocol):
    """The three stages of a transfer (Figure 3), as :func:`stylize_stages` calls them."""

    taps: tuple[str, ...]

    def encoder(self, x: Tensor, taps: Sequence[str]) -> dict[str, Tensor]: ...

    def transfer(self, content_feats: dict[str, Tensor], style_feats: dict[str, Tensor],
                 content_stats: dict[str, fn.Stats] | None = None) -> dict[str, Tensor]: ...

    def decode(self, transferred: dict[str, Tensor]) -> Tensor: ...


class StyA2K(nn.Module):
    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        self.meta: dict[str, Any] = {}
        self.encoder = VGGEncoder()
        arch = self.config.arch
        if arch == "adain":
            self.taps: tuple[str, ...] = ("relu4_1",)
            self.decoder = Decoder(skip_channels=0)
            return
        self.taps = ATTENTION_TAPS
        heads, blocks = self.config.attention.heads, self.config.attention.block_sizes

        def attention(tap: str) -> nn.Module:
            channels = TAP_BY_NAME[tap].channels
            return A2K(channels, blocks[tap], heads) if arch == "a2k" else AllToAll(channels, heads)

        self.attn3, self.attn4, self.attn5 = (attention(t) for t in ATTENTION_TAPS)
        self.merge = ConvLayer(512, 512, relu=False)
        self.decoder = Decoder(skip_channels=256)

    # ----------------------------------------------------------------------------------------------- parameters
    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)

    # --------------------------------------------------------------------------------------------- the pipeline
    def encode_style(self, style: Tensor) -> StyleFeatures:
        """style: (B, 3, Hs, Ws) in [0, 1] -> the features the transfer needs (any size >= 1 px)."""
        padded, _ = pad_image(style)
        return StyleFeatures(self.encoder(padded, self.taps))

    def transfer(self, content_feats: dict[str, Tensor], style_feats: dict[str, Tensor],
                 content_stats: dict[str, fn.Stats] | None = None) -> dict[str, Tensor]:
        """Per-layer transferred features F_cs for one style: {tap: (B, C, h, w)} at the content's resolution.

        ``content_stats``: {tap: (mean, std)} of the whole image when the content is one tile of it
        (`model.tiling`); default: each map's own statistics."""
        stats = content_stats or {}
        if self.config.arch == "adain":
            if stats:
                raise ValueError("the adain ablation does not take whole-image statistics (no tiled inference)")
            return {"relu4_1": fn.adain(content_feats["relu4_1"], style_feats["relu4_1"])}
        modules = (self.attn3, self.attn4, self.attn5)
        return {tap: m(content_feats[tap], style_feats[tap], stats.get(tap))
                for tap, m in zip(ATTENTION_TAPS, modules, strict=True)}

    def decode(self, transferred: dict[str, Tensor]) -> Tensor:
        """{tap: features} -> (B, 3, H, W) unclamped image."""
        if self.config.arch == "adain":
            return self.decoder(transferred["relu4_1"])
        merged = self.merge(transferred["relu4_1"] + upsample2(transferred["relu5_1"]))  # (B, 512, H/8, W/8)
        return self.decoder(merged, transferred["relu3_1"])

    # ---------------------------------------------------------------------------------------------- training
    def encode_pair(self, content: Tensor, style: Tensor,
                    fused: bool = False) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Training: every tap of content and style, without grad. content (B, 3, H, W) with H, W multiples of
        16 (>= 32); style any size >= 32. ``fused`` sends both through the encoder as one batch when their
        shapes match (one call instead of two; the features are the same)."""
        h, w = content.shape[-2:]
        if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE or min(h, w) < MIN_PADDED_SIDE:
            raise ValueError(
                f"training content must be a multiple of {SIZE_MULTIPLE} and >= {MIN_PADDED_SIDE} px, got {h}x{w}")
        with torch.no_grad():
            if fused and content.shape == style.shape:
                both = self.encoder(torch.cat([content, style]))  # (2B, C, h, w) per tap
                b = content.shape[0]
                return {k: v[:b] for k, v in both.items()}, {k: v[b:] for k, v in both.items()}
            return self.encoder(content), self.encoder(pad_image(style)[0])

    def forward_with_features(self, content: Tensor,
                              style: Tensor) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """Training pass (sizes as `encode_pair`). Returns the unclamped output and every tap of content and
        style (computed without grad, for the losses)."""
        c_feats, s_feats = self.encode_pair(content, style)
        return self.decode(self.transfer(c_feats, s_feats)), c_feats, s_feats

    def forward(self, content: Tensor, style: Tensor) -> Tensor:
        return self.forward_with_features(content, style)[0]

    # --------------------------------------------------------------------------------------------- inference
    def stylize(self, content: Tensor, style: Tensor, alpha: float | Tensor = 1.0) -> Tensor:
        """content (B, 3, H, W), style (B, 3, Hs, Ws), both RGB in [0, 1], any sizes -> (B, 3, H, W) in [0, 1]."""
        return self.stylize_from_features(content, [self.encode_style(style)], alpha=alpha)

    def stylize_from_features(self, content: Tensor, styles: Sequence[StyleFeatures], weights: Tensor | None = None,
                              alpha: float | Tensor = 1.0,
                              content_stats: dict[str, fn.Stats] | None = None) -> Tensor:
        """Stylize with pre-encoded styles, mixed by `weights` (see :func:`stylize_stages`)."""
        return stylize_stages(self, content, styles, weights, alpha, content_stats)

    @staticmethod
    def _weights_at(weights: Tensor, padded_size: torch.Size, size: torch.Size) -> Tensor:
        """Resize (B, N) or (B, N, H, W) weights to a feature map of `size`, normalised over N."""
        if weights.dim() == 2:
            wmap = weights[:, :, None, None]
        else:
            ph, pw = padded_size
            h, w = weights.shape[-2:]
            # Always replicate (not pad_to's rule): the padded border belongs to the region at the image's edge.
            wmap = F.pad(weights, (0, pw - w, 0, ph - h), mode="replicate")
            wmap = F.adaptive_avg_pool2d(wmap, tuple(size))
        return wmap / wmap.sum(dim=1, keepdim=True).clamp_min(1e-8)


def stylize_stages(stages: Stages, content: Tensor, styles: Sequence[StyleFeatures], weights: Tensor | None = None,
                   alpha: float | Tensor = 1.0, content_stats: dict[str, fn.Stats] | None = None) -> Tensor:
    """Stylize with pre-encoded styles, mixed by `weights`, through any implementation of the three stages (the
    torch network itself, or exported graphs: service/backends).

    content: (B, 3, H, W). styles: N entries of batch size B. weights: None (N == 1), (B, N) interpolation
    weights, or (B, N, H, W) per-pixel masks; each is normalised to sum to 1 over N. alpha: float or (B,)
    style strength, blended at the feature level. content_stats: see `transfer`. Returns (B, 3, H, W) clamped
    to [0, 1].
    """
    n = len(styles)
    b = content.shape[0]
    if n == 0:
        raise ValueError("at least one style is required")
    if weights is None:
        if n != 1:
            raise ValueError(f"{n} styles need weights (B, N) or masks (B, N, H, W)")
        weights = content.new_ones(b, 1)
    if weights.shape[:2] != (b, n):
        raise ValueError(f"weights must start with (B={b}, N={n}), got {tuple(weights.shape)}")
    padded, (h, w) = pad_image(content)
    if weights.dim() == 4 and tuple(weights.shape[-2:]) != (h, w):
        weights = F.interpolate(weights, size=(h, w), mode="bilinear", align_corners=False)
    c_feats = stages.encoder(padded, stages.taps)
    per_style = [stages.transfer(c_feats, s.feats, content_stats) for s in styles]
    mixed = {}
    for tap, c in c_feats.items():
        # (B, N, h, w) for masks, (B, N, 1, 1) for interpolation weights
        wmap = StyA2K._weights_at(weights, padded.shape[-2:], c.shape[-2:]).to(c.dtype)
        mix = sum(wmap[:, i:i + 1] * t[tap] for i, t in enumerate(per_style))
        a = torch.as_tensor(alpha, dtype=c.dtype, device=c.device).reshape(-1, 1, 1, 1)
        mixed[tap] = a * mix + (1 - a) * c
    return stages.decode(mixed)[..., :h, :w].clamp(0, 1)
