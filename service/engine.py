"""The model engine: the serving policy around one inference backend.

The engine owns the weights, the device and precision choice, warm-up, the style-feature cache, batch keys,
padding to buckets, crops, colour preservation, tiling plans, out-of-memory mapping and /v1/info; the backend
(service/backends: torch today's code, onnxruntime exported graphs) only runs the network.

Every method that touches the network runs in the model thread (see ``batcher.ModelThread``), one call
at a time; only the style cache is shared with the request threads, so it carries a lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import model
from model.checkpoint import FROZEN_PREFIX, default_cache_dir, sha256_file
from model.functional import preserve_color
from model.hardware import (
    NATIVE_BF16_FLAGS,
    cpu_capability,
    cpu_flags,
    huge_pages,
    keep_freed_memory,
    select_device,
)
from model.imageio import quantize
from model.stya2k import padded_size
from model.tiling import TileConfig, TiledStylizer, needs_tiling
from service.backends import GRAPH_BACKENDS, install_hint, make_graph_backend, missing_packages
from service.backends.base import InferenceBackend
from service.backends.graph_backend import GraphBackend
from service.backends.pytorch import TorchBackend
from service.contract import BatchKey, Mode, StyleInput, TransferJob
from service.errors import InsufficientMemory, Internal, InvalidParameter, OutOfMemory, ServiceError
from service.geometry import MIN_SIDE, bucket_shape, pad_to
from service.metrics import ServiceMetrics
from service.settings import Settings

log = logging.getLogger("service.engine")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# STYA2K_MAX_BATCH_SIZE=0 (auto), per device. CPU: measured batched / unbatched throughput 0.55-0.87x and more
# time per image at batch 4 than at batch 1 (docs/BENCHMARKS.md): a CPU's convolutions are already saturated by
# one image, so batching only adds waiting. GPU: batches fill the device (the previous fixed default).
AUTO_BATCH = {"cpu": 1, "cuda": 8}
# Tiled inference: neighbouring tiles are cross-faded over 2 x this band (model.tiling); within the margin.
TILE_BLEND_PX = 32
BF16_MIN_SPEEDUP = 1.25  # CPU auto picks bfloat16 only when the start-up probe measured at least this gain
# STYA2K_BACKEND=auto takes another backend only when its start-up probe (one content of this side) beats torch by
# this much: a small probe's ratio wanders by a few percent from the 512 px one, a switch must win more than that.
BACKEND_MIN_SPEEDUP = 1.1
BACKEND_PROBE_SIDE = 128
# Start-up stays short (issue 29: <= 10 s with a warm cache on 2 cores): candidates are measured in this order (the
# largest expected gain first: int8, then OpenVINO, per the trial) until this many seconds are spent on
# auto; the rest are reported as not measured. Each costs its session creation plus 3 probe calls.
BACKEND_PROBE_BUDGET_S = 6.0
AUTO_ORDER = ("openvino-int8", "onnxruntime-int8", "openvino", "onnxruntime")


class StyleCache:
    """LRU of encoded style features bounded by bytes; thread-safe."""

    def __init__(self, max_bytes: int, metrics: ServiceMetrics) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, model.StyleFeatures] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._metrics = metrics
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> model.StyleFeatures | None:
        with self._lock:
            features = self._items.get(key)
            if features is None:
                self.misses += 1
                self._metrics.style_cache_misses.inc()
                return None
            self._items.move_to_end(key)
            self.hits += 1
            self._metrics.style_cache_hits.inc()
            return features

    def peek(self, key: str) -> model.StyleFeatures | None:
        """Lookup without counting (used inside a batch after the request was already counted)."""
        with self._lock:
            return self._items.get(key)

    def put(self, key: str, features: model.StyleFeatures) -> None:
        size = int(features.nbytes)
        with self._lock:
            if size > self.max_bytes or key in self._items:
                return
            self._items[key] = features
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= int(evicted.nbytes)
            self._metrics.style_cache_bytes.set(self._bytes)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)


def process_uptime_s() -> float | None:
    """Seconds since this process started (Linux /proc), so start-up can be reported from exec, imports included."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat(5), counted after the ")" that ends the command name
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class Precision:
    """The per-machine precision choice, made once at start-up and reported in /v1/info."""

    dtype: torch.dtype | None  # autocast dtype; None = plain float32
    reason: str

    @property
    def name(self) -> str:
        return "float32" if self.dtype is None else str(self.dtype).removeprefix("torch.")


def _padded_style_size(style: StyleInput) -> tuple[int, int]:
    """The padded (Hs, Ws) a style's features have (or will have, when it is still an image)."""
    if style.features is not None:
        return style.features.padded_size
    if style.image is None:
        raise RuntimeError(f"style {style.key[:12]} has neither features nor an image")
    return padded_size(int(style.image.shape[-2]), int(style.image.shape[-1]))


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class Engine:
    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.cache = StyleCache(settings.cache_bytes, metrics)
        self.net: model.StyA2K | None = None
        self.backend: InferenceBackend = TorchBackend(settings.compile)
        self.device = torch.device("cpu")
        self.autocast_dtype: torch.dtype | None = None
        self.precision_reason = ""
        self.huge_pages_reason: str | None = None  # CPU only: read once at load (the probe reads /proc/self/smaps)
        self.heap_reason: str | None = None  # CPU only: what `keep_freed_memory` did at load
        self.max_batch_size = settings.max_batch_size or 1  # resolved per device by load()
        self.startup: dict[str, float | None] = {}  # seconds of each start-up step
        self.weights_label = ""
        self.weights_sha256: str | None = None
        self.backend_reason = ""
        # STYA2K_BACKEND=auto's measurements, per graph backend it measured (None: it measured none)
        self.backend_probe: dict[str, dict[str, float]] | None = None
        self._reference_probe: tuple[float, torch.Tensor] | None = None  # torch's probe, shared by every candidate
        self._largest_ok_pixels = 0  # padded pixels of the largest item computed: OOM below it is transient

    # ------------------------------------------------------------------ loading
    def load(self) -> None:
        """Select the device, load the weights, set precision; runs once, in the model thread."""
        self.device = select_device(self.settings.device, setting="STYA2K_DEVICE=")
        if self.device.type == "cpu" and self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        self.max_batch_size = self.settings.max_batch_size or AUTO_BATCH.get(self.device.type, 1)
        # CPU: every forward pass frees and reallocates the same feature maps; a heap that keeps them saves the
        # page faults (1.08-1.19x at 512 px, docs/BENCHMARKS.md). Process-wide (it also covers whatever embeds the
        # engine) and idempotent; set before the model loads. GLIBC_TUNABLES=glibc.malloc.* / MALLOC_*_ opt out.
        self.heap_reason = keep_freed_memory() if self.device.type == "cpu" else None
        started = time.monotonic()
        if self.settings.uses_random_weights:
            log.warning("STYA2K_WEIGHTS=random: serving an UNTRAINED model (tests only); outputs are noise")
            net = model.StyA2K(model.ModelConfig())
            self.weights_label, self.weights_sha256 = "random", None
        else:
            path = Path(self.settings.weights) if self.settings.weights else model.DEFAULT_WEIGHTS
            net = model.load_model(path, device="cpu")
            self.weights_label, self.weights_sha256 = str(path), sha256_file(Path(path))
        net.eval().requires_grad_(False)
        if self.settings.backend in GRAPH_BACKENDS:
            self._load_graph_backend(net)
            self.startup["load_s"] = round(time.monotonic() - started, 3)
        else:
            # The torch backend moves the network to the device (and NHWC); the precision probe below runs it there.
            torch_backend = TorchBackend(self.settings.compile)
            torch_backend.load(net, self.device, None)
            self.net, self.backend = torch_backend.network, torch_backend
            self.startup["load_s"] = round(time.monotonic() - started, 3)
            precision = self._select_precision()
            self.autocast_dtype, self.precision_reason = precision.dtype, precision.reason
            torch_backend.autocast_dtype = precision.dtype
            self.backend_reason = "torch: STYA2K_BACKEND=torch"
            if self.settings.backend == "auto":
                self.backend_reason = self._choose_backend(torch_backend)
        self.huge_pages_reason = huge_pages().reason if self.device.type == "cpu" else None
        declared = self.backend.capabilities.max_batch
        if declared is not None:
            self.max_batch_size = min(self.max_batch_size, declared)
        log.info(
            "model loaded",
            extra={
                "weights": self.weights_label,
                "device": str(self.device),
                "dtype": self.dtype_name,
                "precision": self.precision_reason,
                "backend": self.backend_reason,
                "max_batch_size": self.max_batch_size,
                "threads": torch.get_num_threads(),
                "seconds": self.startup["load_s"],
            },
        )

    def _load_graph_backend(self, net: model.StyA2K) -> None:
        """STYA2K_BACKEND=onnxruntime|openvino[-int8]: the exported graphs (float32 ones exported into the cache
        now when they are not there; int8 ones must have been quantized by `stya2k export-graph --int8`)."""
        name = self.settings.backend
        missing = missing_packages(name)
        if missing:
            raise RuntimeError(f"STYA2K_BACKEND={name} needs {', '.join(missing)}: {install_hint(name)}")
        if self.settings.dtype not in ("auto", "float32"):
            raise RuntimeError(
                f"STYA2K_DTYPE={self.settings.dtype}: STYA2K_DTYPE is torch's precision; the {name} backend runs "
                "its own graphs (float32, or int8 for the -int8 backends): use STYA2K_DTYPE=auto, or "
                "STYA2K_BACKEND=torch"
            )
        backend = make_graph_backend(name, default_cache_dir(), self.weights_sha256, self.settings.threads)
        try:
            backend.load(net, self.device, None)
        except FileNotFoundError as exc:
            raise RuntimeError(f"STYA2K_BACKEND={name}: {exc}") from None
        self.net, self.backend = net, backend
        self.autocast_dtype = None
        self.precision_reason = f"{backend.precision}: the {name} backend runs {backend.precision} graphs"
        self.backend_reason = f"{name}: STYA2K_BACKEND={name}"
        self.startup["graphs_export_s"] = backend.export_s
        self.startup["sessions_s"] = backend.session_s

    def _choose_backend(self, torch_backend: TorchBackend) -> str:
        """STYA2K_BACKEND=auto: torch, unless a graph backend whose graphs of these weights are already cached
        (start-up never pays an export) is measured faster by BACKEND_MIN_SPEEDUP within its tolerance (and, for
        int8, its graphs' recorded LPIPS meets INT8_LPIPS_BOUND); the fastest such one wins."""
        if self.device.type != "cpu":
            return "torch: auto; other backends are measured on a CPU only (STYA2K_BACKEND=onnxruntime to try one)"
        if self.autocast_dtype is not None:
            return f"torch: auto; {self.dtype_name} was measured faster already (other backends are graphs)"
        if self.weights_sha256 is None:
            return "torch: auto; random weights have no exported graphs"
        verdicts, eligible = [], []
        started = time.monotonic()
        probes: dict[str, dict[str, float]] = {}
        for name in AUTO_ORDER:
            if verdicts and time.monotonic() - started > BACKEND_PROBE_BUDGET_S:  # the first is always tried
                verdicts.append(f"{name}: not measured: the start-up probe budget ({BACKEND_PROBE_BUDGET_S:.0f} s) "
                                "is spent")
                continue
            verdict, probe, candidate = self._try_candidate(name, torch_backend)
            verdicts.append(f"{name}: {verdict}")
            if probe is not None:
                probes[name] = probe
            if candidate is not None and probe is not None:
                eligible.append((probe["speedup"], name, candidate))
        if probes:
            self.startup["backend_probe_s"] = round(time.monotonic() - started, 3)
            self.backend_probe = probes
        summary = "; ".join(verdicts)
        if not eligible:
            return f"torch: auto; {summary}"
        _, name, best = max(eligible, key=lambda item: item[0])
        self.backend = best
        if isinstance(best, GraphBackend) and best.precision != "float32":
            self.autocast_dtype = None
            self.precision_reason = f"{best.precision}: auto picked the {name} backend"
        return f"{name}: auto; {summary}"

    def _try_candidate(self, name: str, torch_backend: TorchBackend
                       ) -> tuple[str, dict[str, float] | None, GraphBackend | None]:
        """One graph backend for auto: (verdict, its probe or None, the loaded backend when it qualifies)."""
        missing = missing_packages(name)
        if missing:
            return f"not installed ({', '.join(missing)})", None, None
        candidate = make_graph_backend(name, default_cache_dir(), self.weights_sha256, self.settings.threads,
                                       export=False)
        if not candidate.graph_set(torch_backend.network).complete():
            how = "`stya2k export-graph --int8 --calibration DIR`" if candidate.precision == "int8" else (
                "`stya2k export-graph`")
            return f"no cached graphs of these weights ({how}, then restart)", None, None
        candidate.load(torch_backend.network, self.device, None)
        if candidate.precision == "int8":
            ok, why = candidate.int8_quality_ok()
            if not ok:
                return f"not measured: {why}", None, None
        probe = self._probe_backends(torch_backend, candidate)
        caps = candidate.capabilities
        measured = (f"measured {probe['speedup']:.2f}x torch at {BACKEND_PROBE_SIDE} px, max abs "
                    f"{probe['max_abs']:.1e} (tolerance {caps.tolerance:.0e})")
        if caps.mean_tolerance is not None:
            measured += f", mean abs {probe['mean_abs']:.1e} (tolerance {caps.mean_tolerance:.0e})"
        if candidate.precision == "int8":
            measured += f", {candidate.int8_quality_ok()[1]}"
        if probe["max_abs"] > caps.tolerance or (
                caps.mean_tolerance is not None and probe["mean_abs"] > caps.mean_tolerance):
            return f"out of its tolerance: {measured}", probe, None
        if probe["speedup"] < BACKEND_MIN_SPEEDUP:
            return f"not faster enough (< {BACKEND_MIN_SPEEDUP}x): {measured}", probe, None
        return f"qualifies: {measured}", probe, candidate

    def _probe(self, backend: InferenceBackend) -> tuple[float, torch.Tensor]:
        """Best-of-2 seconds of one small transfer (after a warm call) on ``backend``, and its output: what auto
        decides by. The same seeded inputs every time, so outputs compare across backends."""
        generator = torch.Generator().manual_seed(0)
        side = BACKEND_PROBE_SIDE
        content = torch.rand(1, 3, side // 8, side // 8, generator=generator)
        content = torch.nn.functional.interpolate(content, size=(side, side), mode="bilinear")  # photo-like: smooth
        style = torch.rand(1, 3, side // 2, side // 2, generator=generator)
        with backend.inference():
            features = backend.encode_styles(backend.to_device(style))
            times = []
            for _ in range(3):
                started = time.perf_counter()
                out = backend.run(backend.to_device(content), [features], None, 1.0)
                times.append(time.perf_counter() - started)
            return min(times[1:]), backend.to_host(out).float()

    def _probe_backends(self, reference: InferenceBackend, candidate: InferenceBackend) -> dict[str, float]:
        """The candidate's probe against the reference's (measured once per start-up: torch is every candidate's
        reference), with the outputs' max and mean abs difference."""
        if self._reference_probe is None:
            self._reference_probe = self._probe(reference)
        torch_s, want = self._reference_probe
        other_s, got = self._probe(candidate)
        diff = (got - want).abs()
        return {"torch_s": round(torch_s, 4), "backend_s": round(other_s, 4),
                "speedup": round(torch_s / other_s, 3), "max_abs": float(diff.max()), "mean_abs": float(diff.mean())}

    def _select_precision(self) -> Precision:
        """Autocast dtype (None = plain float32) and why. auto: float16 on GPU; on CPU bfloat16 only where the
        CPU computes it natively and a short start-up measurement shows it faster, else float32."""
        wanted = self.settings.dtype
        if wanted == "float32":
            return Precision(None, "float32: STYA2K_DTYPE=float32 (exact)")
        if wanted != "auto":
            if wanted == "bfloat16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
                raise RuntimeError("STYA2K_DTYPE=bfloat16 but this GPU does not support bfloat16")
            return Precision(_DTYPES[wanted], f"{wanted}: STYA2K_DTYPE={wanted}")
        if self.device.type == "cuda":
            return Precision(torch.float16, "float16: auto on a GPU")
        native = sorted(set(NATIVE_BF16_FLAGS) & cpu_flags())
        capability = cpu_capability()
        if not native:
            return Precision(
                None,
                f"float32: auto; this CPU ({capability}) has no native bfloat16 ({'/'.join(NATIVE_BF16_FLAGS)}), "
                "where bfloat16 autocast is several times slower",
            )
        speedup = self._probe_cpu_bf16()
        if speedup >= BF16_MIN_SPEEDUP:
            return Precision(
                torch.bfloat16, f"bfloat16: auto; native {'/'.join(native)}, measured {speedup:.2f}x float32"
            )
        return Precision(
            None, f"float32: auto; native {'/'.join(native)} but measured bfloat16 at only {speedup:.2f}x float32"
        )

    def _probe_cpu_bf16(self, side: int = 128) -> float:
        """float32 time / bfloat16 time of the encoder on a small image (best of 2 after one warm call each).

        A first bfloat16 call already slower than float32 ends the probe: emulated bf16 (AVX2) runs 10x+
        slower, and the probe must not delay start-up by more than that one call.
        """
        image = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))  # (1, 3, side, side)

        def timed(dtype: torch.dtype | None, calls: int) -> list[float]:
            context = torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()
            times = []
            with torch.inference_mode(), context:
                for _ in range(calls):
                    started = time.perf_counter()
                    self.network.encoder(image)
                    times.append(time.perf_counter() - started)
            return times

        started = time.monotonic()
        fp32 = min(timed(None, 3)[1:])
        first = timed(torch.bfloat16, 1)[0]
        bf16 = first if first > 2 * fp32 else min(timed(torch.bfloat16, 2))
        self.startup["precision_probe_s"] = round(time.monotonic() - started, 3)
        return fp32 / bf16

    @property
    def dtype_name(self) -> str:
        if isinstance(self.backend, GraphBackend):
            return self.backend.precision
        return "float32" if self.autocast_dtype is None else str(self.autocast_dtype).removeprefix("torch.")

    @property
    def network(self) -> model.StyA2K:
        if self.net is None:
            raise RuntimeError("the model is not loaded yet (Engine.load)")
        return self.net

    @property
    def loaded(self) -> bool:
        return self.net is not None

    def info(self) -> dict[str, Any]:
        net = self.net
        meta = dict(getattr(net, "meta", {}) or {}) if net is not None else {}
        return {
            "version": str(meta.get("version", "untrained" if self.settings.uses_random_weights else "")),
            "arch": net.config.arch if net is not None else None,
            "weights": self.weights_label,
            "sha256": self.weights_sha256,
            # Learned by our training (attention, merge, decoder); the frozen VGG encoder is counted apart.
            "parameters": sum(p.numel() for n, p in net.named_parameters() if not n.startswith(FROZEN_PREFIX))
            if net is not None else 0,
            "encoder_parameters": sum(p.numel() for p in net.encoder.parameters()) if net is not None else 0,
        }

    def public_info(self) -> dict[str, Any]:
        """:meth:`info` with the weights' file name only: the server's paths are nobody's business."""
        info = self.info()
        if info.get("weights"):
            info["weights"] = Path(str(info["weights"])).name
        return info

    def runtime_info(self) -> dict[str, Any]:
        """How this machine runs the model, as chosen at start-up (the /v1/info "runtime" block)."""
        return {
            "dtype": self.dtype_name,
            "dtype_setting": self.settings.dtype,
            "dtype_reason": self.precision_reason,
            "max_batch_size": self.max_batch_size,
            "max_batch_size_setting": self.settings.max_batch_size or "auto",
            "threads": torch.get_num_threads() if self.device.type == "cpu" else None,
            "cpu_capability": cpu_capability(),
            "backend": self.backend.name,
            "backend_setting": self.settings.backend,
            "backend_reason": self.backend_reason,
            "backend_probe": self.backend_probe,
            **self.backend.info(),
            "huge_pages": self.huge_pages_reason,
            "heap": self.heap_reason,
            "warm_shapes": [list(shape) for shape in self.warm_shapes()] if self.settings.warmup else [],
            "startup_s": dict(self.startup),
        }

    # ------------------------------------------------------------------ precision / context
    def _inference(self) -> contextlib.AbstractContextManager[Any]:
        return self.backend.inference()

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.backend.to_device(tensor)

    def _to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.backend.to_host(tensor)

    # ------------------------------------------------------------------ warm-up
    def warm_shapes(self) -> list[tuple[int, int]]:
        """Content shapes to run before reporting ready.

        GPU: the padded shapes most requests land in (the default side at 1:1, 4:3 and 3:4), for cuDNN's
        per-shape autotuning and the allocator. CPU: one small shape, so every kernel runs once before ready;
        oneDNN's per-shape set-up is small next to a multi-second CPU forward pass, so the three full-size passes
        (14 s on 2 cores) mostly delayed readiness. (A first request also encodes its own, uncached style.)
        """
        if self.device.type == "cpu":
            side = self.settings.bucket_px
            return [(side, side)]
        side = self.settings.default_side
        short = max(MIN_SIDE, round(side * 3 / 4))
        step = self.settings.bucket_px
        sizes = ((side, side), (short, side), (side, short))
        return sorted({bucket_shape(h, w, step) for h, w in sizes})

    def warm_up(self) -> None:
        """Run each common shape once (allocator, cuDNN autotune, compile) before reporting ready."""
        started = time.monotonic()
        # CPU: a small style too; a request's own style is encoded on arrival anyway, this only runs each kernel once.
        size = self.settings.style_size if self.device.type == "cuda" else min(self.settings.style_size, 64)
        generator = torch.Generator().manual_seed(0)
        style = torch.rand(1, 3, size, size, generator=generator)
        try:
            self._warm(style, generator)
        except Exception as exc:
            if not self.backend.recover(exc):  # e.g. torch.compile failed: eager mode, warmed up again
                raise
            self._warm(style, generator)
        self.startup["warmup_s"] = round(time.monotonic() - started, 3)
        log.info("warm-up done", extra={"seconds": self.startup["warmup_s"], "shapes": self.warm_shapes()})

    def _warm(self, style: torch.Tensor, generator: torch.Generator) -> None:
        with self._inference():
            features = self.backend.encode_styles(self._to_device(style))
            for height, width in self.warm_shapes():
                content = self._to_device(torch.rand(1, 3, height, width, generator=generator))
                self.backend.run(content, [features], None, 1.0)
        self.backend.synchronize()

    # ------------------------------------------------------------------ batching
    def batch_key(self, job: TransferJob) -> BatchKey:
        height, width = bucket_shape(job.height, job.width, self.settings.bucket_px)
        return (job.mode, height, width, len(job.styles), self._style_sizes(job))

    def _style_sizes(self, job: TransferJob) -> tuple[tuple[int, int], ...]:
        """The padded size of each style, or () when every one is the crop square (all crop-fit traffic):
        features of different sizes cannot share a batch (StyleFeatures.cat), crop traffic keeps its keys."""
        sizes = tuple(_padded_style_size(style) for style in job.styles)
        square = padded_size(self.settings.style_size, self.settings.style_size)
        return () if all(size == square for size in sizes) else sizes

    def lookup_style(self, key: str) -> model.StyleFeatures | None:
        return self.cache.get(key)

    def run_batch(self, jobs: list[TransferJob]) -> list[torch.Tensor | BaseException]:
        """One forward pass for jobs sharing a batch key -> uint8 (3, h, w) CPU images, in order.

        Raises on failures of the whole pass (the batcher splits and retries); after an out-of-memory
        error the CUDA cache is emptied first so the retry gets the freed memory.
        """
        try:
            return self._run_batch(jobs)
        except Exception as exc:
            if _is_oom(exc):
                self.backend.release_memory()
            raise

    def _run_batch(self, jobs: list[TransferJob]) -> list[torch.Tensor | BaseException]:
        mode, height, width, count, _ = self.batch_key(jobs[0])
        if mode is Mode.multistyle and not self.backend.capabilities.masks:
            raise InvalidParameter("mode", f"the {self.backend.name} backend has no per-pixel style masks "
                                   "(multistyle); STYA2K_BACKEND=torch has")
        with self._inference():
            encoded = self._encode_missing_styles(jobs)
            content = torch.stack([pad_to(job.content[None], height, width)[0] for job in jobs])
            content = self._to_device(content)  # (B, 3, Hb, Wb)
            styles = [self._style_batch(jobs, n, encoded) for n in range(count)]
            weights = self._weights_batch(jobs, mode, height, width)
            alpha = torch.tensor([job.alpha for job in jobs], device=self.backend.tensor_device)  # (B,)
            stylized = self.backend.run(content, styles, weights, alpha)  # (B, 3, Hb, Wb)
            results: list[torch.Tensor | BaseException] = []
            for index, job in enumerate(jobs):
                crop = (slice(index, index + 1), slice(None), slice(0, job.height), slice(0, job.width))
                image = stylized[crop].float()  # (1, 3, h, w)
                if job.preserve_color:
                    image = preserve_color(image, content[crop].float())
                results.append(self._to_host(quantize(image[0])))  # (3, h, w) uint8
        self._largest_ok_pixels = max(self._largest_ok_pixels, height * width)
        return results

    def with_style_features(self, styles: Sequence[StyleInput]) -> tuple[StyleInput, ...]:
        """The styles with their features, encoding those that have none (once each): a video's frames then
        reuse them however small the style cache is."""
        with self._inference():
            encoded = self._encode_styles(styles)
        return tuple(
            style if style.features is not None else StyleInput(key=style.key, image=None, features=encoded[style.key])
            for style in styles
        )

    def _encode_missing_styles(self, jobs: Sequence[TransferJob]) -> dict[str, model.StyleFeatures]:
        """Encode each uncached style of the batch once (deduplicated by key); cache and return them.

        The returned dict keeps them usable for this batch even when the cache is too small to hold them.
        """
        return self._encode_styles([style for job in jobs for style in job.styles])

    def _encode_styles(self, styles: Sequence[StyleInput]) -> dict[str, model.StyleFeatures]:
        missing: dict[str, torch.Tensor] = {}
        for style in styles:
            if style.features is None and style.key not in missing:
                if style.image is None:
                    raise RuntimeError(f"style {style.key[:12]} has neither features nor an image")
                missing[style.key] = style.image
        encoded: dict[str, model.StyleFeatures] = {}
        by_shape: dict[tuple[int, ...], list[str]] = {}  # only images of one shape stack (style_fit=whole)
        for key, image in missing.items():
            by_shape.setdefault(tuple(image.shape), []).append(key)
        chunk = self.max_batch_size
        parts = [keys[start : start + chunk] for keys in by_shape.values() for start in range(0, len(keys), chunk)]
        for part in parts:
            images = self._to_device(torch.stack([missing[k] for k in part]))  # (b, 3, Hs, Ws)
            features = self.backend.encode_styles(images)
            for index, key in enumerate(part):
                single = features[index]
                # clone: a cached entry must not pin the whole batched tensor
                single = type(single)({tap: t.clone() for tap, t in single.feats.items()})
                encoded[key] = single
                self.cache.put(key, single)
        return encoded

    def _style_batch(
        self, jobs: Sequence[TransferJob], n: int, encoded: dict[str, model.StyleFeatures]
    ) -> model.StyleFeatures:
        items = []
        for job in jobs:
            style = job.styles[n]
            features = style.features if style.features is not None else encoded[style.key]
            items.append(features.to(self.backend.tensor_device))
        return model.StyleFeatures.cat(items)

    def _weights_batch(
        self, jobs: Sequence[TransferJob], mode: Mode, height: int, width: int
    ) -> torch.Tensor | None:
        if mode is Mode.stylize:
            return None
        weights = [job.weights for job in jobs]
        if any(w is None for w in weights):
            raise RuntimeError(f"{mode} job without weights")
        if mode is Mode.interpolate:
            return self._to_device(torch.stack(weights))  # (B, N)
        maps = [pad_to(w[None], height, width)[0] for w in weights]  # each (N, Hb, Wb)
        return self._to_device(torch.stack(maps))  # (B, N, Hb, Wb)

    # ------------------------------------------------------------------ large images
    def tile_config(self) -> TileConfig:
        return TileConfig(tile=self.settings.tile_px, margin=self.settings.tile_margin_px, blend=TILE_BLEND_PX)

    def needs_tiling(self, job: TransferJob) -> bool:
        return needs_tiling(job.height, job.width, self.tile_config())

    def tiled(self, job: TransferJob) -> TiledStylizer:
        """A large job as tile steps (run each with the model thread, then :meth:`finish_tiled`).

        Runs in the model thread: encodes the job's uncached styles. The content and the output stay on the CPU;
        each step moves one tile to the device, so device memory is bounded by the tile, not the image.
        """
        if not self.backend.capabilities.tiling:
            raise InvalidParameter("max_side", f"the {self.backend.name} backend cannot tile; outputs up to "
                                   f"{self.settings.tile_px} px per side only (STYA2K_BACKEND=torch tiles)")
        with self._inference():
            encoded = self._encode_missing_styles([job])
            styles = [self._style_batch([job], n, encoded) for n in range(len(job.styles))]
        weights = job.weights
        if weights is not None:
            weights = weights[None]  # (1, N) or (1, N, H, W)
        return TiledStylizer(
            self.backend.network, job.content[None], styles, weights, job.alpha, self.tile_config(),
            self.backend.tensor_device,
            context=self._inference,
        )

    def finish_tiled(self, job: TransferJob, tiled: TiledStylizer) -> torch.Tensor:
        """The finished tiled output -> uint8 (3, H, W) on the CPU (colour preservation applied)."""
        image = tiled.result()  # (1, 3, H, W) float32 on the CPU
        if job.preserve_color:
            image = preserve_color(image, job.content[None])
        return quantize(image[0])

    # ------------------------------------------------------------------ failures
    def failure(self, job: TransferJob, exc: BaseException) -> ServiceError:
        """The error a request gets when it fails on its own (the batcher already split the batch)."""
        if isinstance(exc, ServiceError):
            return exc
        if _is_oom(exc):
            height, width = bucket_shape(job.height, job.width, self.settings.bucket_px)
            if height * width <= self._largest_ok_pixels:
                return OutOfMemory(
                    "device memory was short for this request at the moment; retry shortly", retry_after_s=1
                )
            return InsufficientMemory(
                f"a {job.width}x{job.height} output does not fit in device memory even alone; "
                "use a smaller max_side"
            )
        log.error("request failed in the model", exc_info=exc)
        return Internal(f"internal error while computing this request ({type(exc).__name__})")
