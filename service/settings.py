"""The service's one configuration object, read from ``STYA2K_*`` environment variables.

No pydantic-settings: the environment is parsed here so every bad value gets a message naming the
variable, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

ENV_PREFIX = "STYA2K_"
RANDOM_WEIGHTS = "random"


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


@dataclass(frozen=True)
class Settings:
    """Everything the service can be configured with; one field per ``STYA2K_<FIELD>`` variable."""

    # Model
    weights: str | None = None  # None = shipped default weights; "random" = untrained model (tests only)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (autocast dtype; auto is chosen per machine)
    compile: bool = False  # torch.compile the transfer path (GPU; slow start-up)
    warmup: bool = True  # run the common shapes once before reporting ready
    threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default
    workers: int = 4  # threads that decode, resize and encode images off the event loop
    # Batching
    max_batch_size: int = 0  # 0 = auto per device: 1 on CPU (batching only adds waiting there), 8 on GPU
    max_wait_ms: float = 10.0
    queue_size: int = 64
    deadline_ms: int = 30_000
    bucket_px: int = 64  # content sizes are padded up to a multiple of this so requests can share a batch
    # Limits
    max_body_bytes: int = 20 * 1024 * 1024
    max_input_pixels: int = 40_000_000
    max_side: int = 1024  # largest output side a client may ask for
    default_side: int = 512  # output side when the client does not ask
    style_size: int = 256  # styles are resized (short side) and centre-cropped to this square
    max_styles: int = 4
    cache_bytes: int = 256 * 1024 * 1024
    # Decoded pixels held at once by all decodes together (width x height x bytes per pixel of the decoded
    # mode, plus the conversion to RGB); decodes wait for room, an image that alone exceeds it gets 413.
    decode_budget_bytes: int = 512 * 1024 * 1024
    max_json_items: int = 1000  # JSON bodies: values + object keys in all (strings of any length count once)
    max_json_depth: int = 8  # JSON bodies: nesting of arrays / objects
    # Connections (docs/RELIABILITY.md)
    max_connections: int = 1000  # open client connections; lowered to what the open-files limit allows
    keep_alive_s: float = 5.0  # idle time after a response before the connection is closed
    header_timeout_s: float = 10.0  # time to send a complete request header (408 / close after it)
    body_timeout_s: float = 15.0  # longest pause while sending the body (408 after it)
    # Security / network / lifecycle
    api_key: str | None = None
    metrics_require_key: bool = True  # with api_key set, /metrics also needs X-API-Key (false: open)
    host: str = "127.0.0.1"
    port: int = 8000
    drain_grace_s: float = 5.0
    drain_timeout_s: float = 30.0
    log_level: str = "info"

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (default ``os.environ``); unknown ``STYA2K_*`` names are an error."""
        env = os.environ if env is None else env
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in env.items():
            if not key.startswith(ENV_PREFIX):
                continue
            name = key[len(ENV_PREFIX) :].lower()
            if name not in known:
                allowed = ", ".join(ENV_PREFIX + n.upper() for n in sorted(known))
                raise SettingsError(f"unknown setting {key}; known settings: {allowed}")
            values[name] = _PARSERS[name](key, raw)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def uses_random_weights(self) -> bool:
        return self.weights == RANDOM_WEIGHTS


def _parse_int(key: str, raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise SettingsError(f"{key}={raw!r} is not an integer") from None


def _parse_float(key: str, raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise SettingsError(f"{key}={raw!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise SettingsError(f"{key}={raw!r} must be a finite number")
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_bool(key: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{key}={raw!r} is not a boolean; use one of {sorted(_TRUE | _FALSE)}")


def _parse_str(key: str, raw: str) -> str:
    return raw.strip()


def _parse_optional_str(key: str, raw: str) -> str | None:
    value = raw.strip()
    return value or None


def _parser_for(field_type: Any) -> Callable[[str, str], Any]:
    return {
        "int": _parse_int,
        "float": _parse_float,
        "bool": _parse_bool,
        "str": _parse_str,
        "str | None": _parse_optional_str,
    }[str(field_type)]


_PARSERS: dict[str, Callable[[str, str], Any]] = {f.name: _parser_for(f.type) for f in fields(Settings)}

_CHOICES = {
    "dtype": ("auto", "float32", "bfloat16", "float16"),
    "log_level": ("debug", "info", "warning", "error", "critical"),
}
# (minimum, maximum) inclusive; None = unbounded on that side
_RANGES: dict[str, tuple[float | None, float | None]] = {
    "threads": (0, 1024),
    "workers": (1, 256),
    "max_batch_size": (0, 1024),
    "max_wait_ms": (0, 10_000),
    "queue_size": (1, 1_000_000),
    "deadline_ms": (1, 3_600_000),
    "bucket_px": (16, 1024),
    "max_body_bytes": (1024, None),
    "max_input_pixels": (256, None),
    "max_side": (64, 8192),
    "default_side": (32, 8192),
    "style_size": (32, 2048),
    "max_styles": (2, 16),
    "cache_bytes": (0, None),
    "decode_budget_bytes": (1024 * 1024, None),
    "max_json_items": (16, 10_000_000),
    "max_json_depth": (2, 1000),
    "max_connections": (1, 1_000_000),
    "keep_alive_s": (0.1, 3600),
    "header_timeout_s": (0.1, 3600),
    "body_timeout_s": (0.1, 3600),
    "port": (0, 65535),
    "drain_grace_s": (0, 3600),
    "drain_timeout_s": (0, 3600),
}


def _env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _validate(settings: Settings) -> None:
    for name, choices in _CHOICES.items():
        value = getattr(settings, name)
        if value not in choices:
            raise SettingsError(f"{_env_name(name)}={value!r} is not allowed; use one of {list(choices)}")
    for name, (low, high) in _RANGES.items():
        value = getattr(settings, name)
        if (low is not None and value < low) or (high is not None and value > high):
            raise SettingsError(
                f"{_env_name(name)}={value!r} is out of range; allowed {low if low is not None else '-inf'}"
                f"..{high if high is not None else 'inf'}"
            )
    device = settings.device
    if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise SettingsError(f"{_env_name('device')}={device!r} is not allowed; use auto, cpu, cuda or cuda:N")
    if settings.default_side > settings.max_side:
        raise SettingsError(
            f"STYA2K_DEFAULT_SIDE={settings.default_side} exceeds STYA2K_MAX_SIDE={settings.max_side}"
        )
    if settings.weights is not None and not settings.weights.strip():
        raise SettingsError("STYA2K_WEIGHTS is empty; leave it unset for the shipped weights")
