"""The service's one configuration object, read from ``STYA2K_*`` environment variables.

No pydantic-settings: the environment is parsed here so every bad value gets a message naming the
variable, the value and what is allowed, and an unknown STYA2K_* name is refused (docs/ARCHITECTURE.md, "Why
settings stay hand-written", lists what pydantic-settings 2.14 would change).
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from service.backends import BACKENDS
from service.contract import DEFAULT_STYLE_FIT, MAX_SIDE, StyleFit

ENV_PREFIX = "STYA2K_"
RANDOM_WEIGHTS = "random"
# STYA2K_* variables of the project's other tools: the server ignores them, so a shell set up for training, the
# image build or compose can still run `stya2k serve` (any other unknown STYA2K_* name stays an error: a typo must
# not pass silently). tests/service/test_settings.py checks that every STYA2K_* name in the tree is a setting or here.
OTHER_TOOLS_ENV: dict[str, str] = {
    "STYA2K_CACHE": "training and the service: cache folder of the data packs, the campaign and the exported graphs "
    "(training.pack, training.campaign, service/backends/onnx_runtime.py)",
    "STYA2K_CAMPAIGN_DIR": "training: the campaign's state folder (training.campaign)",
    "STYA2K_LB_BACKEND": "load balancer: replica addresses (deploy/nginx)",
    "STYA2K_LB_IMAGE": "compose: the load balancer's image (docker-compose.yml)",
    "STYA2K_LB_PORT": "load balancer: its port (deploy/nginx)",
    "STYA2K_LB_PUBLISH": "compose: the load balancer's published port (docker-compose.yml)",
    "STYA2K_LB_STATE_DIR": "load balancer: its state folder (deploy/nginx)",
    "STYA2K_REPLICAS": "compose: number of service replicas (docker-compose.yml)",
    "STYA2K_NOFILE_LIMIT": "compose: the replicas' open-files limit (docker-compose.yml)",
    "STYA2K_PROMETHEUS_PUBLISH": "compose: Prometheus's published port (docker-compose.yml)",
    "STYA2K_CPU_BASE_IMAGE": "image build: the CPU base image (deploy/docker/build-cpu.sh)",
    "STYA2K_CPU_TORCH_INDEX_URL": "image build: where the CPU torch wheel comes from (deploy/docker/build-cpu.sh)",
    "STYA2K_TORCH_WHEELS": "image build: a local folder of torch wheels (deploy/docker/build-cpu.sh)",
    "STYA2K_TORCH_INDEX_PORT": "image build: port of the local wheel index (deploy/docker/build-cpu.sh)",
    "STYA2K_REGISTRY_TIMEOUT": "image build: seconds to wait for the registry (deploy/docker/build-cpu.sh)",
    "STYA2K_BASE_PACKAGES": "image build: packages of the local base (deploy/docker/local-base.sh)",
    "STYA2K_DEBIAN_MIRROR": "image build: Debian mirror of the local base (deploy/docker/local-base.sh)",
    "STYA2K_URL": "the torch-free client's command line (stya2k-client): the server's URL",
    "STYA2K_SKIP_CONTAINERS": "tests: skip the container tests (tests/run.sh)",
    "STYA2K_CONTAINER_REPORT": "tests: where the container tests write their figures",
    "STYA2K_TEST_CHROMIUM": "tests: the Chromium binary of the demo-page tests",
    "STYA2K_DEMO_SCREENSHOT_DIR": "tests: where the demo-page tests save screenshots",
}
# A replica id (STYA2K_REPLICA_ID): the first part of its job ids, and an nginx map key / upstream name suffix
# (deploy/nginx/render.py checks the same pattern). No dot: the dot separates it from the job's random part.
JOBS_STORE_SCHEMES = ("redis://", "rediss://", "unix://")
REPLICA_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


def setting(default: Any, help: str) -> Any:
    """A :class:`Settings` field with its one-line help: the text ``stya2k serve --help`` shows for it."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Settings:
    """Everything the service can be configured with; one field per ``STYA2K_<FIELD>`` variable."""

    # Model
    weights: str | None = setting(
        None,
        "weights file (.pt); default: the shipped weights; 'random' = untrained model (tests only)",
    )
    device: str = setting("auto", "auto | cpu | cuda | cuda:N (auto: the GPU when there is one)")
    dtype: str = setting(
        "auto",
        "auto | float32 | bfloat16 | float16: autocast precision (auto: float16 on GPU; on CPU bfloat16 only "
        "where the CPU has native bf16 and a start-up probe measures it >= 1.25x faster, else float32; float32 = "
        "exact); the choice and its reason are in /v1/info runtime",
    )
    backend: str = setting(
        "auto",
        "auto | torch | onnxruntime | onnxruntime-int8 | openvino | openvino-int8: the runtime that computes the "
        "network (onnxruntime, openvino: the exported float32 graphs, exported into the cache on first use; -int8: "
        "the graphs `stya2k export-graph --int8` quantized; auto: torch unless a backend whose graphs of these "
        "weights are already cached is measured >= 1.1x faster at start-up within its tolerance, int8 only with a "
        "recorded LPIPS <= 0.02 vs float32); /v1/info runtime says which and why",
    )
    compile: bool = setting(False, "torch.compile the transfer path (GPU; slower start-up, faster requests)")
    warmup: bool = setting(True, "run the common shapes once before reporting ready")
    threads: int = setting(
        0,
        "torch intra-op threads on CPU; 0 = torch's default (idle OpenMP threads sleep: OMP_WAIT_POLICY=PASSIVE "
        "unless you set it)",
    )
    workers: int = setting(4, "threads that decode, resize and encode images off the event loop")
    # Batching
    max_batch_size: int = setting(0, "most requests combined into one forward pass; 0 = auto: 1 on CPU, 8 on GPU")
    max_wait_ms: float = setting(10.0, "longest time a request waits for others to fill a batch")
    queue_size: int = setting(64, "requests waiting for the model before new ones get 429")
    deadline_ms: int = setting(
        30_000, "per-request deadline, arrival to answer; later ones get 504 (X-Deadline-Ms may shorten it)"
    )
    bucket_px: int = setting(64, "content sizes are padded up to a multiple of this so requests can share a batch")
    # Limits
    max_body_bytes: int = setting(20 * 1024 * 1024, "largest request body; larger ones get 413")
    max_input_pixels: int = setting(40_000_000, "largest decoded input image (width x height); larger ones get 413")
    max_side: int = setting(1024, "largest output side a client may ask for (max_side field)")
    default_side: int = setting(512, "output side when the client does not ask")
    style_size: int = setting(
        384, "side in px styles are prepared at: crop = short side, then this square; whole = long side"
    )
    style_fit: str = setting(
        DEFAULT_STYLE_FIT.value,
        "crop | whole: how a style image becomes the model's input; crop cuts a centred square (a panorama "
        "loses its sides), whole keeps all of it (long side = STYA2K_STYLE_SIZE); a request's style_fit "
        "overrides it",
    )
    max_styles: int = setting(4, "most styles in one interpolate / multistyle request")
    cache_bytes: int = setting(256 * 1024 * 1024, "memory for cached style features (repeated styles skip the encoder)")
    # Decoded pixels held at once by all decodes together (width x height x bytes per pixel of the decoded
    # mode, plus the conversion to RGB); decodes wait for room, an image that alone exceeds it gets 413.
    decode_budget_bytes: int = setting(
        512 * 1024 * 1024,
        "decoded-image bytes held by all decodes at once; an image needing more alone gets 413",
    )
    max_json_items: int = setting(
        1000,
        "JSON bodies: most values + object keys (a string of any length counts once); more gets 413",
    )
    max_json_depth: int = setting(8, "JSON bodies: deepest nesting of arrays / objects; deeper gets 413")
    # Tiled inference (large images, the jobs API): memory per forward pass bounded by the tile, not the image
    tile_px: int = setting(512, "large images are computed in square tiles of this side (a multiple of 64)")
    tile_margin_px: int = setting(
        128, "context computed around each tile and discarded (a multiple of 64; covers the receptive field)"
    )
    # Jobs API (docs/API.md "Jobs"): work that outlives a request, kept in this process's memory only
    jobs_max_side: int = setting(
        4096, "largest output side a job may ask for (POST /v1/jobs; the sync endpoints keep STYA2K_MAX_SIDE)"
    )
    jobs_queue_size: int = setting(
        8, "jobs accepted and waiting to run before new ones get 429 (each holds its decoded images)"
    )
    jobs_memory_bytes: int = setting(
        2 * 1024 * 1024 * 1024,
        "decoded inputs all accepted jobs may hold together (content, region weights, styles, uploads): a job "
        "needing more alone gets 413 job_too_large, one that does not fit beside the others 429",
    )
    job_timeout_s: float = setting(
        3600.0, "seconds a job may take from acceptance to its result; later it fails with deadline_exceeded"
    )
    job_result_ttl_s: float = setting(900.0, "seconds a finished job's result is kept (410 after)")
    job_result_bytes: int = setting(
        512 * 1024 * 1024, "memory for finished jobs' results; the oldest are dropped first (410) beyond it"
    )
    replica_id: str | None = setting(
        None,
        "this replica's name, the first part of its job ids (the load balancer routes job paths by it): 1-32 of "
        "a-z 0-9 -, unique per replica; unset: the host name's first label",
    )
    # The shared job store (service/redis_jobs.py, docs/DEPLOY.md "Jobs on Redis"): any replica answers any job
    jobs_store: str = setting(
        "memory",
        "where jobs live: memory (this process; a job is answered by the replica that accepted it) or "
        "redis://host:port/db (shared by every replica: any replica runs, answers and cancels any job)",
    )
    jobs_key_prefix: str = setting("stya2k:", "with a Redis job store: the prefix of every key this service uses")
    jobs_store_max_input_bytes: int = setting(
        16 * 1024 * 1024,
        "with a Redis job store: largest raw inputs of one job (uploads together; they travel through Redis so "
        "another replica can run the job); larger jobs get 413",
    )
    jobs_store_claim_idle_s: float = setting(
        30.0,
        "with a Redis job store: seconds without a heartbeat after which a running job's replica counts as dead "
        "and another replica takes the job over",
    )
    jobs_store_max_attempts: int = setting(
        3, "with a Redis job store: times a job is started (its replica dying each time) before it ends failed"
    )
    # Video jobs (docs/API.md "Video"): frame-by-frame transfer of a clip, H.264 mp4 out
    video_max_side: int = setting(
        1024, "largest output side of a video job (frames are not tiled); default: STYA2K_DEFAULT_SIDE"
    )
    video_max_seconds: float = setting(120.0, "longest video a job may take, in seconds of footage")
    video_max_frames: int = setting(3600, "most frames a video job may take")
    video_max_input_pixels: int = setting(
        3840 * 2160, "largest frame of an uploaded video, in pixels (frames are scaled down to the output side)"
    )
    video_max_bytes: int = setting(
        20 * 1024 * 1024, "largest uploaded video file (STYA2K_MAX_BODY_BYTES, the limit of every body, applies first)"
    )
    # Connections (docs/RELIABILITY.md)
    max_connections: int = setting(
        1000,
        "open client connections (lowered to what the open-files limit allows, with a warning); at the limit the "
        "oldest idle one is closed, and only when all are busy is a new one refused (503 too_many_connections)",
    )
    keep_alive_s: float = setting(5.0, "seconds an idle keep-alive connection stays open after a response")
    header_timeout_s: float = setting(
        10.0,
        "seconds a client has to send a complete request header from connect or its last response: silent "
        "connections are closed, half-sent headers get 408",
    )
    body_timeout_s: float = setting(
        15.0, "longest pause in seconds while a client sends the body (408 after); the whole body must also arrive "
        "within the deadline"
    )
    # Security / network / lifecycle
    api_key: str | None = setting(
        None,
        "require this X-API-Key header on /v1/* (prefer the env var: flags show in `ps`)",
    )
    metrics_require_key: bool = setting(
        True,
        "with an API key set, /metrics needs it too (--no-metrics-require-key: open)",
    )
    host: str = setting("127.0.0.1", "address to listen on (0.0.0.0 = every interface)")
    port: int = setting(8000, "TCP port")
    drain_grace_s: float = setting(5.0, "after SIGTERM: seconds of 503 readiness while still serving, before closing")
    drain_timeout_s: float = setting(30.0, "after closing: seconds to finish in-flight requests")
    log_level: str = setting("info", "debug | info | warning | error | critical")

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
            if key in OTHER_TOOLS_ENV:  # never a setting's name (tests/service/test_settings.py)
                continue
            if name not in known:
                allowed = ", ".join(ENV_PREFIX + n.upper() for n in sorted(known))
                raise SettingsError(f"unknown setting {key}; known settings: {allowed}")
            values[name] = _PARSERS[name](key, raw)
        return cls(**values)

    @staticmethod
    def help(name: str) -> str:
        """What setting ``name`` does (one line)."""
        return str(_FIELDS[name].metadata["help"])

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def uses_random_weights(self) -> bool:
        return self.weights == RANDOM_WEIGHTS

    @property
    def replica(self) -> str:
        """The replica id job ids carry: STYA2K_REPLICA_ID, or one derived from the host name."""
        return self.replica_id if self.replica_id is not None else hostname_replica_id()


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


_FIELDS = {f.name: f for f in fields(Settings)}
_PARSERS: dict[str, Callable[[str, str], Any]] = {f.name: _parser_for(f.type) for f in fields(Settings)}

_CHOICES = {
    "dtype": ("auto", "float32", "bfloat16", "float16"),
    "backend": ("auto", *BACKENDS),
    "log_level": ("debug", "info", "warning", "error", "critical"),
    "style_fit": tuple(fit.value for fit in StyleFit),
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
    "max_side": (MAX_SIDE.low, 8192),  # the API's own minimum (service.contract)
    "default_side": (32, 8192),
    "style_size": (32, 2048),
    "max_styles": (2, 16),
    "jobs_max_side": (MAX_SIDE.low, 16384),
    "jobs_queue_size": (1, 100_000),
    "jobs_memory_bytes": (1024 * 1024, None),
    "job_timeout_s": (1, 7 * 24 * 3600),
    "job_result_ttl_s": (1, 7 * 24 * 3600),
    "job_result_bytes": (1024, None),
    "tile_px": (64, 8192),
    "video_max_side": (MAX_SIDE.low, 4096),
    "video_max_seconds": (0.1, 24 * 3600),
    "video_max_frames": (2, 1_000_000),
    "video_max_input_pixels": (256, None),
    "video_max_bytes": (1024, None),
    "jobs_store_max_input_bytes": (1024, None),
    "jobs_store_claim_idle_s": (1, 3600),
    "jobs_store_max_attempts": (1, 100),
    "tile_margin_px": (64, 1024),
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
    if settings.jobs_max_side < settings.default_side:
        raise SettingsError(
            f"STYA2K_JOBS_MAX_SIDE={settings.jobs_max_side} is below STYA2K_DEFAULT_SIDE={settings.default_side}"
        )
    if settings.video_max_side < settings.default_side:
        raise SettingsError(
            f"STYA2K_VIDEO_MAX_SIDE={settings.video_max_side} is below STYA2K_DEFAULT_SIDE={settings.default_side}"
        )
    for name in ("tile_px", "tile_margin_px"):
        if getattr(settings, name) % 64:
            value = getattr(settings, name)
            raise SettingsError(f"{_env_name(name)}={value} must be a multiple of 64 (the attention block grid)")
    if settings.jobs_store != "memory" and not settings.jobs_store.startswith(JOBS_STORE_SCHEMES):
        raise SettingsError(
            f"STYA2K_JOBS_STORE={settings.jobs_store!r} is not allowed; use memory or a Redis URL "
            "(redis://host:port/db, rediss://... for TLS, unix:///path/redis.sock)"
        )
    if not re.fullmatch(r"[A-Za-z0-9:_.-]{0,64}", settings.jobs_key_prefix):
        raise SettingsError(
            f"STYA2K_JOBS_KEY_PREFIX={settings.jobs_key_prefix!r} is not allowed: up to 64 of A-Z a-z 0-9 : _ . -"
        )
    if settings.weights is not None and not settings.weights.strip():
        raise SettingsError("STYA2K_WEIGHTS is empty; leave it unset for the shipped weights")
    if settings.replica_id is not None and not REPLICA_ID_PATTERN.match(settings.replica_id):
        raise SettingsError(
            f"STYA2K_REPLICA_ID={settings.replica_id!r} is not allowed: 1-32 characters of a-z, 0-9 and '-', "
            "starting with a letter or digit (it becomes part of job ids and URLs)"
        )


def hostname_replica_id(hostname: str | None = None) -> str:
    """The replica id when STYA2K_REPLICA_ID is unset: the host name's first label, lowercased, other characters
    as '-', cut to 32 (a container's host name is its short id, so scaled replicas differ); 'local' if none is left."""
    label = (socket.gethostname() if hostname is None else hostname).split(".")[0].lower()
    cleaned = re.sub(r"[^a-z0-9-]", "-", label).lstrip("-")[:32]
    return cleaned if REPLICA_ID_PATTERN.match(cleaned) else "local"


# ---------------------------------------------------------------------------------------------- documentation
def _default_text(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def markdown_table() -> str:
    """The README's configuration table, generated from the fields (``python -m service.settings``)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for item in fields(Settings):
        meaning = str(item.metadata["help"]).replace("|", "\\|")  # a bare | would end the cell
        rows.append(f"| `{_env_name(item.name)}` | {_default_text(item.default)} | {meaning} |")
    return "\n".join(rows)


if __name__ == "__main__":
    import sys

    sys.stdout.write(markdown_table() + "\n")
