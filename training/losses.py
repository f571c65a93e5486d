"""Training losses (section 3.3): global style loss (eq. 16) + non-parametric A2K* feature loss (eq. 17).

Facts from the authors' reference code where the paper is silent: both terms are mean-squared errors; the A2K*
target at each layer is DA + PA + content feature with alpha=1, beta=0 and no convolutions; its queries and keys
concatenate the mean-variance-normalised features of every shallower tap (nearest-resized to the layer) with the
layer's own, while values are the raw style features.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from model import functional as fn
from model.encoder import TAP_NAMES


def weight(default: float, term: str, help: str) -> Any:
    """A loss weight: the factor of the term named ``term`` in the total (and a training option, `help`)."""
    return field(default=default, metadata={"term": term, "help": help})


@dataclass(frozen=True, kw_only=True)
class LossWeights:
    """One field per weighted loss term. A new term is a field here plus the term in `StyleTransferLoss.terms`:
    the trainer weights whatever terms it gets, and TrainConfig (which inherits these fields) gives it a
    command-line option, a checkpoint entry and a log.csv column."""

    style_weight: float = weight(10.0, "global_style", "global style loss weight (the paper's lambda_1)")
    a2k_weight: float = weight(1.25, "a2k", "A2K* loss weight (the paper's lambda_2: lower trades content for style)")
    content_weight: float = weight(1.0, "content", "content loss weight (AdaIN baseline only)")

    def weights(self) -> dict[str, float]:
        """{term: weight} for every weighted term."""
        return {f.metadata["term"]: getattr(self, f.name) for f in fields(LossWeights)}


# The weighted terms, in log.csv's column order.
TERMS: tuple[str, ...] = tuple(f.metadata["term"] for f in fields(LossWeights))


@dataclass(frozen=True, kw_only=True)
class LossConfig(LossWeights):
    kind: str = "a2k"  # "a2k": paper's loss; "adain": AdaIN baseline (content-to-target + global style)
    style_taps: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
    a2k_blocks: dict[str, int] = field(
        default_factory=lambda: {"relu2_1": 16, "relu3_1": 8, "relu4_1": 8, "relu5_1": 4})
    heads: int = 8
    shallow_keys: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("a2k", "adain"):
            raise ValueError(f"unknown loss kind {self.kind!r}; expected 'a2k' or 'adain'")


class LossTerms:
    """The weighted total and every term of `TERMS` (zero where the loss kind has none), e.g. ``terms.a2k``."""

    def __init__(self, total: Tensor, terms: dict[str, Tensor]) -> None:
        self.total = total
        self.terms = terms

    def __getattr__(self, name: str) -> Tensor:
        terms = self.__dict__.get("terms", {})
        if name in terms:
            return terms[name]
        raise AttributeError(name)

    def as_dict(self) -> dict[str, float]:
        return {"total": float(self.total.detach()), **{k: float(v.detach()) for k, v in self.terms.items()}}


def weigh(terms: dict[str, Tensor], weights: dict[str, float]) -> LossTerms:
    """total = sum of weight * term over the terms given (as pytorch-AdaIN's train.py weights its network's
    losses); the terms of `TERMS` not given are logged as zero."""
    unknown = set(terms) - set(weights)
    if unknown:
        raise KeyError(f"loss terms without a weight: {sorted(unknown)} (add a LossWeights field)")
    zero = next(iter(terms.values())).new_zeros(())
    total = zero
    for name, value in terms.items():
        total = total + weights[name] * value
    return LossTerms(total, {name: terms.get(name, zero) for name in TERMS})


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
    """The loss terms of a batch, unweighted (`terms`), or weighted by the config's weights (calling it):
    total = style_weight * L_gs + a2k_weight * L_A2K* (or the AdaIN baseline's style + content loss)."""

    def __init__(self, encoder: Callable[..., dict[str, Tensor]], config: LossConfig | None = None) -> None:
        self.encoder = encoder
        self.config = config or LossConfig()

    def __call__(self, output: Tensor, c_feats: dict[str, Tensor], s_feats: dict[str, Tensor]) -> LossTerms:
        return weigh(self.terms(output, c_feats, s_feats), self.config.weights())

    def terms(self, output: Tensor, c_feats: dict[str, Tensor], s_feats: dict[str, Tensor]) -> dict[str, Tensor]:
        """{term: unweighted loss} for the terms of the config's kind; a new term is computed here."""
        cfg = self.config
        out_feats = self.encoder(output)
        terms = {"global_style": global_style_loss(out_feats, s_feats, cfg.style_taps)}
        if cfg.kind == "adain":
            target = fn.adain(c_feats["relu4_1"], s_feats["relu4_1"])
            terms["content"] = F.mse_loss(out_feats["relu4_1"], target)
            return terms
        a2k = output.new_zeros(())
        for tap, block_size in cfg.a2k_blocks.items():
            with torch.no_grad():
                target = a2k_target(c_feats, s_feats, tap, block_size, cfg.heads, cfg.shallow_keys)
            a2k = a2k + F.mse_loss(out_feats[tap], target)
        terms["a2k"] = a2k
        return terms
