"""Attention modules: the All-to-Key module (Algorithm 1) and the all-to-all ablation. Math in `functional`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model import functional as fn


def _conv1x1(channels: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 1)


class A2K(nn.Module):
    """All-to-key attention at one encoder layer: out = fusion_D(DA) + fusion_P(PA) + content (eq. 14)."""

    def __init__(self, channels: int, block_size: int, heads: int = 8) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.block_size = block_size
        self.heads = heads
        # Distributed branch projections.
        self.q, self.k, self.v = _conv1x1(channels), _conv1x1(channels), _conv1x1(channels)
        # Progressive branch projections.
        self.q2, self.k2, self.v2 = _conv1x1(channels), _conv1x1(channels), _conv1x1(channels)
        self.fusion_d, self.fusion_p = _conv1x1(channels), _conv1x1(channels)
        self.sim_alpha = nn.Parameter(torch.ones(1))
        self.sim_beta = nn.Parameter(torch.zeros(1))

    def forward(self, content: Tensor, style: Tensor, content_stats: fn.Stats | None = None,
                style_stats: fn.Stats | None = None) -> Tensor:
        """content: (B, C, H, W), style: (B, C, Hs, Ws) raw encoder features -> (B, C, H, W).

        ``content_stats``: the content's per-channel (mean, std) when ``content`` is one tile of the image.
        ``style_stats``: the style's, when ``style`` was padded to the block grid beforehand (the exported graph,
        model/graphs.py); default: its own.
        """
        norm_c = fn.mean_variance_norm(content, content_stats)
        norm_s = fn.mean_variance_norm(style, style_stats)
        da = fn.distributed_branch(self.q(norm_c), self.k(norm_s), self.v(style), self.block_size, self.heads,
                                   self.sim_alpha, self.sim_beta)
        pa = fn.progressive_branch(self.q2(norm_c), self.k2(norm_s), self.v2(style), self.block_size, self.heads)
        return self.fusion_d(da) + self.fusion_p(pa) + content


class AllToAll(nn.Module):
    """Ablation: full softmax attention over every style position with the same projections, fusion and residual."""

    def __init__(self, channels: int, heads: int = 8) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.heads = heads
        self.q, self.k, self.v = _conv1x1(channels), _conv1x1(channels), _conv1x1(channels)
        self.fusion = _conv1x1(channels)

    def forward(self, content: Tensor, style: Tensor, content_stats: fn.Stats | None = None,
                style_stats: fn.Stats | None = None) -> Tensor:
        """content: (B, C, H, W), style: (B, C, Hs, Ws) -> (B, C, H, W); the stats as in `A2K`."""
        q = self.q(fn.mean_variance_norm(content, content_stats))
        k = self.k(fn.mean_variance_norm(style, style_stats))
        return self.fusion(fn.all_to_all(q, k, self.v(style), self.heads)) + content
