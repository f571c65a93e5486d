"""Training losses (section 3.3): global style loss (eq. 16) + non-parametric A2K* feature loss (eq. 17).

Facts from the authors' reference code where the paper is silent: both terms are mean-squared errors; the A2K*
target at each layer is DA + PA + content feature with alpha=1, beta=0 and no convolutions; its queries and keys
concatenate the mean-variance-normalised features of every shallower tap (nearest-resized to the layer) with the
layer's own, while values are the raw style features.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from model import functional as fn
from model.encoder import TAP_NAMES


@dataclass(frozen=True)
class LossConfig:
    kind: str = "a2k"  # "a2k": paper's loss; "adain": AdaIN baseline (content-to-target + global style)
    style_weight: float = 10.0  # lambda_1
    a2k_weight: float = 1.25  # lambda_2
    content_weight: float = 1.0  # AdaIN baseline only
    style_taps: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
    a2k_blocks: dict[str, int] = field(
        default_factory=lambda: {"relu2_1": 16, "relu3_1": 8, "relu4_1": 8, "relu5_1": 4})
    heads: int = 8
    shallow_keys: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("a2k", "adain"):
            raise ValueError(f"unknown loss kind {self.kind!r}; expected 'a2k' or 'adain'")


@dataclass
class LossTerms:
    total: Tensor
    global_style: Tensor
    a2k: Tensor
    content: Tensor

    def as_dict(self) -> dict[str, float]:
        return {"total": float(self.total.detach()), "global_style": float(self.global_style.detach()),
                "a2k": float(self.a2k.detach()),
                "content": float(self.content.detach())}


def global_style_loss(out_feats: dict[str, Tensor], style_feats: dict[str, Tensor], taps: tuple[str, ...]) -> Tensor:
    """Sum over taps of MSE(mean) + MSE(std) between output and style features (eq. 16)."""
    loss = out_feats[taps[0]].new_zeros(())
    for tap in taps:
        o_mean, o_std = fn.calc_mean_std(out_feats[tap])
        s_mean, s_std = fn.calc_mean_std(style_feats[tap])
        loss = loss + F.mse_loss(o_mean, s_mean) + F.mse_loss(o_std, s_std)
    return loss


def shallow_key(feats: dict[str, Tensor], tap: str) -> Tensor:
    """Normalised features of `tap` and every shallower tap, nearest-resized to `tap`'s size: (B, sum C, h, w)."""
    upto = TAP_NAMES[: TAP_NAMES.index(tap) + 1]
    size = feats[tap].shape[-2:]
    return torch.cat([fn.mean_variance_norm(F.interpolate(feats[t], size=size, mode="nearest")
                                            if feats[t].shape[-2:] != size else feats[t]) for t in upto], dim=1)


def a2k_target(c_feats: dict[str, Tensor], s_feats: dict[str, Tensor], tap: str, block_size: int, heads: int,
               shallow_keys: bool = True) -> Tensor:
    """Non-parametric A2K*(F_c, F_s) at `tap`: DA + PA + F_c with identity projections, alpha=1, beta=0."""
    if shallow_keys:
        q, k = shallow_key(c_feats, tap), shallow_key(s_feats, tap)
    else:
        q, k = fn.mean_variance_norm(c_feats[tap]), fn.mean_variance_norm(s_feats[tap])
    return fn.both_branches(q, k, s_feats[tap], block_size, heads, 1.0, 0.0) + c_feats[tap]


class StyleTransferLoss:
    """total = style_weight * L_gs + a2k_weight * L_A2K* (or the AdaIN baseline's content + style loss)."""

    def __init__(self, encoder: Callable[..., dict[str, Tensor]], config: LossConfig | None = None) -> None:
        self.encoder = encoder
        self.config = config or LossConfig()

    def __call__(self, output: Tensor, c_feats: dict[str, Tensor], s_feats: dict[str, Tensor]) -> LossTerms:
        cfg = self.config
        out_feats = self.encoder(output)
        zero = output.new_zeros(())
        style = global_style_loss(out_feats, s_feats, cfg.style_taps)
        if cfg.kind == "adain":
            target = fn.adain(c_feats["relu4_1"], s_feats["relu4_1"])
            content = F.mse_loss(out_feats["relu4_1"], target)
            return LossTerms(cfg.style_weight * style + cfg.content_weight * content, style, zero, content)
        a2k = zero
        for tap, block_size in cfg.a2k_blocks.items():
            with torch.no_grad():
                target = a2k_target(c_feats, s_feats, tap, block_size, cfg.heads, cfg.shallow_keys)
            a2k = a2k + F.mse_loss(out_feats[tap], target)
        return LossTerms(cfg.style_weight * style + cfg.a2k_weight * a2k, style, a2k, zero)
