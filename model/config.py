"""Typed configuration of the network. Checkpoints carry `ModelConfig.to_dict()` so they rebuild themselves."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

Arch = Literal["a2k", "all_to_all", "adain"]
ARCHS: tuple[str, ...] = ("a2k", "all_to_all", "adain")
# The encoder taps with an attention module (a2k, all_to_all); AdaIN uses relu4_1 alone.
ATTENTION_TAPS: tuple[str, ...] = ("relu3_1", "relu4_1", "relu5_1")


@dataclass(frozen=True)
class AttentionConfig:
    """All-to-key attention settings (section 4.1 and the authors' reference code)."""

    heads: int = 8
    # Block (kernel = stride) size per encoder tap where an attention module sits.
    block_sizes: dict[str, int] = field(default_factory=lambda: {"relu3_1": 8, "relu4_1": 8, "relu5_1": 4})


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "a2k"
    attention: AttentionConfig = field(default_factory=AttentionConfig)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; expected one of {', '.join(ARCHS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {sorted(unknown)}")
        attention = AttentionConfig(**data.get("attention", {}))
        return cls(arch=data.get("arch", "a2k"), attention=attention)
