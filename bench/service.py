"""Service benchmark: an httpx async load generator against `python -m service` started on 127.0.0.1.

    python -m bench.service --preset cpu      # small content size and request counts for a shared CPU box
    python -m bench.service --preset gpu      # production settings on a CUDA machine (bf16, batch 32)
    python -m bench.service --preset smoke --out /tmp/s.json --doc /tmp/B.md   # seconds; used by tests/bench

What it measures, all in one run:
  * model-only time of the same image in this process (the engine's network and precision, cached style
    features), before any server starts, so the end-to-end overhead ratio = e2e p50 at concurrency 1 / it;
  * for each server configuration (batched; batching disabled with STYA2K_MAX_BATCH_SIZE=1; style cache off
    with STYA2K_CACHE_BYTES=0) and concurrency level: throughput, p50/p90/p99/mean latency, status counts and,
    from /metrics deltas, mean server-side decode / queue wait / compute / encode time and mean batch size;
  * ratios: batching gain (batched / unbatched throughput per concurrency), e2e overhead, style cache gain.
The same style image is sent with every request (a popular style), so with the cache on it is encoded once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch

from bench import common
from model.imageio import quantize
from service import imaging

SECTION = "bench/service.py"
INHERITED_OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")  # before anything of ours could set it
STYLIZE = "/v1/stylize"

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"size": 256, "style_size": 256, "concurrency": "1,4,16,64", "rounds": 1, "min_requests": 6,
            "max_requests": 64, "max_seconds": 150.0, "warmup_requests": 1, "max_batch_size": 8,
            "max_wait_ms": 10.0, "threads": 1, "dtype": "auto", "compile": False, "weights": "default",
            "cache_concurrency": "1", "model_iters": 3, "ready_timeout_s": 300.0},
    "gpu": {"size": 512, "style_size": 256, "concurrency": "1,4,16,64", "rounds": 50, "min_requests": 200,
            "max_requests": 4000, "max_seconds": 60.0, "warmup_requests": 64, "max_batch_size": 32,
            "max_wait_ms": 5.0, "threads": 0, "dtype": "bfloat16", "compile": False, "weights": "default",
            "cache_concurrency": "1,16", "model_iters": 50, "ready_timeout_s": 900.0},
    # One GPU lease (bench/gpu/inference_lease.sh, issue 14): short levels, the shipped default dtype (auto).
    "gpu-lease": {"size": 512, "style_size": 256, "concurrency": "1,16,64", "rounds": 50, "min_requests": 64,
                  "max_requests": 3000, "max_seconds": 8.0, "warmup_requests": 32, "max_batch_size": 32,
                  "max_wait_ms": 5.0, "threads": 0, "dtype": "auto", "compile": False, "weights": "default",
                  "cache_concurrency": "1,16", "model_iters": 30, "ready_timeout_s": 120.0},
    # Paired before/after (--baseline-tree): each tree's defaults at the README's 512 px, concurrency 1 and 4.
    "paired-cpu": {"size": 512, "style_size": 256, "concurrency": "1,4", "rounds": 2, "min_requests": 3,
                   "max_requests": 8, "max_seconds": 240.0, "warmup_requests": 0, "max_batch_size": 8,
                   "max_wait_ms": 10.0, "threads": 0, "dtype": "auto", "compile": False, "weights": "default",
                   "cache_concurrency": "", "model_iters": 1, "ready_timeout_s": 600.0},
    "smoke": {"size": 64, "style_size": 64, "concurrency": "1,2", "rounds": 1, "min_requests": 2,
              "max_requests": 2, "max_seconds": 60.0, "warmup_requests": 0, "max_batch_size": 4,
              "max_wait_ms": 5.0, "threads": 1, "dtype": "auto", "compile": False, "weights": "random",
              "cache_concurrency": "1", "model_iters": 1, "ready_timeout_s": 120.0},
}


# ------------------------------------------------------------------------------------------------ inputs
def synthetic_image(width: int, height: int, seed: int, fmt: str) -> bytes:
    """A deterministic photo-like test image (smooth colour fields plus texture), encoded as ``fmt``."""
    generator = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, height).view(height, 1)
    xs = torch.linspace(0, 1, width).view(1, width)
    phase = torch.rand(3, generator=generator) * 6.28
    freq = 2 + torch.rand(3, generator=generator) * 6
    channels = [0.5 + 0.35 * torch.sin(freq[c] * (xs + 0.6 * ys) * 3.14 + phase[c]) * torch.cos(freq[c] * ys)
                for c in range(3)]  # each (H, W)
    image = torch.stack(channels) + 0.08 * torch.rand(3, height, width, generator=generator)  # (3, H, W)
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8)  # (3, H, W)
    buffer = io.BytesIO()
    imaging.from_uint8(pixels).save(buffer, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ metrics
def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (samples only)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            samples[name] = float(value)
    return samples


def metric_delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def server_view(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Server-side means over a load level from /metrics deltas (seconds -> ms)."""

    def mean_ms(metric: str) -> float | None:
        count = metric_delta(before, after, f"stya2k_{metric}_seconds_count")
        total = metric_delta(before, after, f"stya2k_{metric}_seconds_sum")
        return 1000 * total / count if count else None

    batches = metric_delta(before, after, "stya2k_batch_size_count")
    latency_key = f'stya2k_request_duration_seconds_sum{{endpoint="{STYLIZE}"}}'
    latency_count = metric_delta(before, after, latency_key.replace("_sum", "_count"))
    return {
        "decode_ms": mean_ms("decode"),
        "queue_wait_ms": mean_ms("queue_wait"),
        "compute_ms_per_batch": mean_ms("compute"),
        "encode_ms": mean_ms("encode"),
        "request_ms": 1000 * metric_delta(before, after, latency_key) / latency_count if latency_count else None,
        "batches": batches,
        "mean_batch_size": metric_delta(before, after, "stya2k_batch_size_sum") / batches if batches else None,
        "cache_hits": metric_delta(before, after, "stya2k_style_cache_hits_total"),
        "cache_misses": metric_delta(before, after, "stya2k_style_cache_misses_total"),
    }


# ------------------------------------------------------------------------------------------------ server
@dataclass
class ServerConfig:
    label: str
    env: dict[str, str]
    concurrency: list[int]


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    startup_s: float = 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(args: argparse.Namespace, overrides: dict[str, str], port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STYA2K_")}
    env.update({
        "STYA2K_HOST": "127.0.0.1", "STYA2K_PORT": str(port), "STYA2K_DEVICE": args.device,
        "STYA2K_DTYPE": args.dtype, "STYA2K_THREADS": str(args.threads), "STYA2K_DEFAULT_SIDE": str(args.size),
        "STYA2K_MAX_SIDE": str(max(args.size, 1024)), "STYA2K_STYLE_SIZE": str(args.style_size),
        "STYA2K_MAX_BATCH_SIZE": str(args.max_batch_size), "STYA2K_MAX_WAIT_MS": str(args.max_wait_ms),
        # Nothing may be refused or expire: a benchmark measures latency, the limits have their own tests.
        "STYA2K_QUEUE_SIZE": str(max(1024, 4 * max(args.concurrency))), "STYA2K_DEADLINE_MS": "3600000",
        "STYA2K_COMPILE": "1" if args.compile else "0", "STYA2K_DRAIN_GRACE_S": "0",
        "STYA2K_LOG_LEVEL": "warning",
    })
    if args.weights != "default":
        env["STYA2K_WEIGHTS"] = args.weights
    env.update(overrides)
    return env


@contextlib.contextmanager
def running_server(args: argparse.Namespace, overrides: dict[str, str], log_dir: Path,
                   cwd: Path = common.REPO_ROOT, env: dict[str, str] | None = None) -> Iterator[Server]:
    """Start `python -m service` in ``cwd`` (a source tree), wait for /health/ready, always stop it.

    ``env``: the server's whole environment (paired mode: each tree's own defaults); else server_env().
    """
    port = free_port()
    log_path = log_dir / f"server-{port}.log"
    started = time.monotonic()
    environment = server_env(args, overrides, port) if env is None else {**env, "STYA2K_PORT": str(port)}
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "service"], cwd=cwd, env=environment, stdout=log_file,
                                   stderr=subprocess.STDOUT)
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_ready(server, args.ready_timeout_s)
        server.startup_s = time.monotonic() - started
        yield server
    finally:
        stop_server(process)


def wait_ready(server: Server, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited with {server.process.returncode}; log: "
                               f"{server.log_path.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.base_url + "/health/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(f"the server was not ready within {timeout_s:.0f} s; log: {server.log_path}")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


# ------------------------------------------------------------------------------------------------ load
@dataclass
class Sample:
    latency_s: float
    status: int
    queue_ms: float | None = None
    compute_ms: float | None = None
    batch_size: int | None = None


@dataclass
class Workload:
    content: bytes
    style: bytes
    size: int
    fmt: str
    samples: list[Sample] = field(default_factory=list)


async def one_request(client: httpx.AsyncClient, work: Workload) -> Sample:
    files = {"content": ("content.jpg", work.content, "image/jpeg"), "style": ("style.jpg", work.style, "image/jpeg")}
    data = {"max_side": str(work.size), "format": work.fmt}
    started = time.perf_counter()
    try:
        response = await client.post(STYLIZE, files=files, data=data)
    except httpx.HTTPError:
        return Sample(time.perf_counter() - started, 0)
    elapsed = time.perf_counter() - started

    def header(name: str) -> float | None:
        value = response.headers.get(name)
        return float(value) if value is not None else None

    batch = header("x-batch-size")
    return Sample(elapsed, response.status_code, header("x-queue-ms"), header("x-compute-ms"),
                  int(batch) if batch is not None else None)


async def run_level(base_url: str, work: Workload, concurrency: int, requests: int, max_seconds: float,
                    warmup: int) -> dict[str, Any]:
    """``concurrency`` closed-loop clients send ``requests`` in total (or until ``max_seconds``)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=httpx.Timeout(3600.0)) as client:
        for _ in range(warmup):
            await one_request(client, work)
        before = parse_metrics((await client.get("/metrics")).text)
        issued = 0
        samples: list[Sample] = []
        stop_at = time.monotonic() + max_seconds

        async def client_loop() -> None:
            nonlocal issued
            while issued < requests and time.monotonic() < stop_at:
                issued += 1
                samples.append(await one_request(client, work))

        started = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        wall = time.perf_counter() - started
        after = parse_metrics((await client.get("/metrics")).text)
    return summarise(concurrency, samples, wall, server_view(before, after))


def summarise(concurrency: int, samples: list[Sample], wall: float, server: dict[str, Any]) -> dict[str, Any]:
    ok = [s for s in samples if s.status == 200]
    latencies = [s.latency_s for s in ok]
    statuses = Counter(str(s.status) for s in samples)

    def stat(values: list[float], q: float) -> float | None:
        return common.percentile(values, q) * 1000 if values else None

    return {
        "concurrency": concurrency, "requests": len(samples), "ok": len(ok), "statuses": dict(statuses),
        "wall_s": wall, "throughput_rps": len(ok) / wall if wall else None,
        "p50_ms": stat(latencies, 50), "p90_ms": stat(latencies, 90), "p99_ms": stat(latencies, 99),
        "mean_ms": 1000 * sum(latencies) / len(latencies) if latencies else None,
        "max_ms": 1000 * max(latencies) if latencies else None,
        "client_mean_batch_size": (sum(s.batch_size or 0 for s in ok) / len(ok)) if ok else None,
        "server": server,
    }


def requests_for(args: argparse.Namespace, concurrency: int) -> int:
    return max(args.min_requests, min(args.max_requests, args.rounds * concurrency))


# ------------------------------------------------------------------------------------------------ codecs
def codec_timings(args: argparse.Namespace, work: Workload) -> dict[str, Any]:
    """Request-thread work the service does per image, timed in this process.

    decode_*: pipeline.prepare (content decode + resize + to tensor; style decode + crop unless cached);
    encode_current_*: pipeline.encode as shipped. (Results before 2026-12 also hold encode_fast_*: a proposed
    one-memcpy conversion, measured beside the per-byte one it replaced; since shipped as
    model.imageio.uint8_to_pil, the experiment only timed the shipped function twice and was removed.)
    """
    from service import pipeline
    from service.contract import Mode, TransferRequest
    from service.settings import Settings

    settings = Settings(weights="random", default_side=args.size, max_side=max(args.size, 1024),
                        style_size=args.style_size)
    request = TransferRequest(
        mode=Mode.stylize, content=work.content, styles=[work.style], max_side=args.size, format=work.fmt
    )
    cpu = torch.device("cpu")
    timing_args = {"warmup": 1, "min_iters": 3, "max_iters": 20, "budget_s": 1.0}
    job = pipeline.prepare(request, settings, lambda key: None)
    output = quantize(job.content)  # (3, H, W) uint8: a stand-in for the stylized output
    out: dict[str, Any] = {
        "decode_style_cached_ms": common.time_calls(lambda: pipeline.prepare(request, settings, lambda key: job),
                                                    cpu, **timing_args).median_s * 1000,
        "decode_style_uncached_ms": common.time_calls(lambda: pipeline.prepare(request, settings, lambda key: None),
                                                      cpu, **timing_args).median_s * 1000,
    }
    for fmt in ("png", "jpeg"):
        current = common.time_calls(lambda fmt=fmt: pipeline.encode(output, fmt), cpu, **timing_args)
        out[f"encode_current_{fmt}_ms"] = current.median_s * 1000
    return out


# ------------------------------------------------------------------------------------------------ model only
def model_only(args: argparse.Namespace, work: Workload) -> dict[str, Any]:
    """`_model_timings`, then the engine's memory is released before any server starts."""
    result = _model_timings(args, work)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def _model_timings(args: argparse.Namespace, work: Workload) -> dict[str, Any]:
    """Time the same image through the engine's network in this process (no server running).

    Returns model_s (net.stylize_from_features on the padded content with cached style features, under the
    engine's precision), engine_cached_s (Engine.run_batch of one request whose style is cached: padding,
    transfer, crop, quantise, copy to host) and engine_uncached_s (the same with the style encoded in the batch).
    """
    from service import geometry, pipeline
    from service.contract import Mode, TransferRequest
    from service.engine import Engine
    from service.metrics import ServiceMetrics
    from service.settings import Settings

    settings = Settings(weights=None if args.weights == "default" else args.weights, device=args.device,
                        dtype=args.dtype, threads=args.threads, default_side=args.size,
                        max_side=max(args.size, 1024), style_size=args.style_size, compile=args.compile)
    engine = Engine(settings, ServiceMetrics())
    engine.load()
    engine.warm_up()
    request = TransferRequest(
        mode=Mode.stylize, content=work.content, styles=[work.style], max_side=args.size, format=work.fmt
    )
    uncached_job = pipeline.prepare(request, settings, lambda key: None)
    engine.run_batch([uncached_job])  # fills the style cache
    cached_job = pipeline.prepare(request, settings, engine.lookup_style)
    device = engine.device
    timing_args = {"warmup": 1, "min_iters": args.model_iters, "max_iters": args.model_iters, "budget_s": 0.0}
    engine_cached = common.time_calls(lambda: engine.run_batch([cached_job]), device, **timing_args)
    engine_uncached = common.time_calls(lambda: engine.run_batch([uncached_job]), device, **timing_args)
    net = engine.net
    with torch.inference_mode(), precision(engine):
        height, width = geometry.bucket_shape(cached_job.height, cached_job.width, settings.bucket_px)
        content = geometry.pad_to(cached_job.content[None], height, width).to(device)  # (1, 3, Hb, Wb)
        content = content.contiguous(memory_format=torch.channels_last)  # as the engine feeds it, on every device
        features = cached_job.styles[0].features
        alpha = torch.ones(1, device=device)
        model_timing = common.time_calls(lambda: net.stylize_from_features(content, [features], None, alpha),
                                         device, **timing_args)
    result = {"model_s": model_timing.median_s, "engine_cached_s": engine_cached.median_s,
              "engine_uncached_s": engine_uncached.median_s, "content_shape": [height, width],
              "device": str(device), "dtype": engine.dtype_name, "threads": torch.get_num_threads(),
              "iters": args.model_iters}
    return result


def precision(engine: Any) -> contextlib.AbstractContextManager:
    if engine.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(engine.device.type, dtype=engine.autocast_dtype)


# ------------------------------------------------------------------------------------------------ paired
def paired_env(args: argparse.Namespace) -> dict[str, str]:
    """Each tree's own defaults: only what a benchmark must pin (address, output size, nothing refused or expired).

    OMP_WAIT_POLICY is dropped unless it was set before this script started: importing our service package sets
    it, and the baseline tree must run as its users ran it.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("STYA2K_")}
    if not INHERITED_OMP_WAIT_POLICY:
        env.pop("OMP_WAIT_POLICY", None)
    env.update({
        "STYA2K_HOST": "127.0.0.1", "STYA2K_DEFAULT_SIDE": str(args.size), "STYA2K_MAX_SIDE": str(max(args.size, 1024)),
        "STYA2K_QUEUE_SIZE": str(max(1024, 4 * max(args.concurrency))), "STYA2K_DEADLINE_MS": "3600000",
        "STYA2K_DRAIN_GRACE_S": "0", "STYA2K_LOG_LEVEL": "info",
    })
    if args.weights != "default":
        env["STYA2K_WEIGHTS"] = args.weights
    return env


def first_requests(base_url: str, work: Workload, count: int) -> list[float]:
    """Latency (s) of the first ``count`` requests after ready, one at a time (a slow first request shows here)."""

    async def go() -> list[float]:
        async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(3600.0)) as client:
            samples = [await one_request(client, work) for _ in range(count)]
        if any(s.status != 200 for s in samples):
            raise RuntimeError(f"first requests failed: {[s.status for s in samples]}")
        return [s.latency_s for s in samples]

    return asyncio.run(go())


def run_paired_server(args: argparse.Namespace, label: str, cwd: Path, work: Workload, log_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"label": label, "tree": str(cwd), "levels": []}
    with running_server(args, {}, log_dir, cwd=cwd, env=paired_env(args)) as server:
        out["startup_s"] = server.startup_s
        out["info"] = httpx.get(server.base_url + "/v1/info", timeout=10).json()
        out["first_requests_s"] = first_requests(server.base_url, work, args.first_requests)
        for concurrency in args.concurrency:
            level = asyncio.run(run_level(server.base_url, work, concurrency, requests_for(args, concurrency),
                                          args.max_seconds, args.level_warmup * concurrency))
            out["levels"].append(level)
            log(f"[{label}] c={concurrency}: {level['ok']}/{level['requests']} ok, "
                f"{level['throughput_rps'] or 0:.3f} req/s, p50 {level['p50_ms'] or 0:.0f} ms, "
                f"mean batch {level['server']['mean_batch_size']}")
        out["ready_log"] = ready_log_line(server.log_path)
    log(f"[{label}] ready after {out['startup_s']:.1f} s; first requests {out['first_requests_s']}")
    return out


def ready_log_line(path: Path) -> dict[str, Any] | None:
    """The server's own "ready" log record (start-up step timings, where the tree logs them)."""
    import json

    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and "ready" in (record.get("msg"), record.get("message")):
                return record
    return None


@contextlib.contextmanager
def paused(pid_file: Path | None) -> Iterator[None]:
    """SIGSTOP the process whose pid ``pid_file`` holds (a background job on the same cores) for one server run,
    SIGCONT it afterwards whatever happens; nothing without a pid file."""
    pid = None
    if pid_file is not None and pid_file.is_file():
        with contextlib.suppress(ValueError):
            pid = int(pid_file.read_text().strip())
    if pid is not None:
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            pid = None
    try:
        yield
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def run_paired(args: argparse.Namespace) -> dict[str, Any]:
    """Today's tree (``--baseline-tree``) and this one, each with its own defaults, alternated ``--rounds`` times
    in one run so both see the same machine load; ratios are after / before medians over the rounds."""
    device = common.select_device(args.device)
    work = Workload(synthetic_image(args.size, args.size, 1, "JPEG"), synthetic_image(512, 512, 2, "JPEG"),
                    args.size, args.format)
    result: dict[str, Any] = {
        "mode": "paired", "meta": common.machine_info(device),
        "command": "python -m bench.service " + " ".join(sys.argv[1:]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "baseline": {"tree": str(args.baseline_tree), "git": args.baseline_git},
        "content_bytes": len(work.content), "style_bytes": len(work.style), "servers": [],
    }
    started = time.monotonic()
    trees = (("before", Path(args.baseline_tree)), ("after", common.REPO_ROOT))
    with tempfile.TemporaryDirectory(prefix="bench-service-") as log_dir:
        for round_index in range(args.pairs):
            order = trees if round_index % 2 == 0 else trees[::-1]  # ABBA: neither side always runs first
            for label, cwd in order:
                with paused(args.pause_pid_file):
                    entry = run_paired_server(args, label, cwd, work, Path(log_dir))
                entry["round"] = round_index
                result["servers"].append(entry)
                if args.out:  # partial results survive a later failure
                    common.write_json(args.out.with_name(args.out.name + ".partial"), result)  # not *.json: no report
    result["paired"] = paired_summary(result["servers"], args.concurrency)
    result["wall_s"] = time.monotonic() - started
    return result


def paired_summary(servers: list[dict[str, Any]], levels: list[int]) -> dict[str, Any]:
    def median(values: list[float]) -> float | None:
        return common.percentile(values, 50) if values else None

    out: dict[str, Any] = {}
    for label in ("before", "after"):
        runs = [s for s in servers if s["label"] == label]
        out[label] = {
            "startup_s": median([s["startup_s"] for s in runs]),
            "first_request_s": median([s["first_requests_s"][0] for s in runs]),
            "second_request_s": median([s["first_requests_s"][1] for s in runs if len(s["first_requests_s"]) > 1]),
            "throughput": {str(c): median([lvl["throughput_rps"] for s in runs for lvl in s["levels"]
                                           if lvl["concurrency"] == c and lvl["throughput_rps"]]) for c in levels},
            "p50_ms": {str(c): median([lvl["p50_ms"] for s in runs for lvl in s["levels"]
                                       if lvl["concurrency"] == c and lvl["p50_ms"]]) for c in levels},
        }
    before, after = out["before"], out["after"]
    out["speedup"] = {c: (after["throughput"][c] / before["throughput"][c])
                      if after["throughput"][c] and before["throughput"][c] else None for c in after["throughput"]}
    return out


# ------------------------------------------------------------------------------------------------ driver
def server_configs(args: argparse.Namespace) -> list[ServerConfig]:
    return [
        ServerConfig("batched", {}, args.concurrency),
        ServerConfig("unbatched", {"STYA2K_MAX_BATCH_SIZE": "1"}, args.concurrency),
        ServerConfig("cache_off", {"STYA2K_CACHE_BYTES": "0"}, args.cache_concurrency),
    ]


def run_server_config(args: argparse.Namespace, config: ServerConfig, work: Workload, log_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"label": config.label, "env": config.env, "levels": []}
    with running_server(args, config.env, log_dir) as server:
        out["startup_s"] = server.startup_s
        out["info"] = httpx.get(server.base_url + "/v1/info", timeout=10).json()
        # One request first: the style gets encoded (and cached when the cache is on) outside the levels.
        asyncio.run(run_level(server.base_url, work, 1, max(1, args.warmup_requests), 600.0, 0))
        for concurrency in config.concurrency:
            level = asyncio.run(run_level(server.base_url, work, concurrency, requests_for(args, concurrency),
                                          args.max_seconds, args.level_warmup * concurrency))
            out["levels"].append(level)
            log(f"[{config.label}] c={concurrency}: {level['ok']}/{level['requests']} ok, "
                f"{level['throughput_rps'] or 0:.2f} req/s, p50 {level['p50_ms'] or 0:.0f} ms, "
                f"p99 {level['p99_ms'] or 0:.0f} ms, mean batch {level['server']['mean_batch_size']}")
    return out


def ratios(result: dict[str, Any]) -> dict[str, Any]:
    by_label = {s["label"]: {lvl["concurrency"]: lvl for lvl in s["levels"]} for s in result["servers"]}
    batched, unbatched = by_label.get("batched", {}), by_label.get("unbatched", {})
    cache_off = by_label.get("cache_off", {})
    out: dict[str, Any] = {"batching_gain": {}, "cache_gain": {}}
    for c, level in batched.items():
        if c in unbatched and level["throughput_rps"] and unbatched[c]["throughput_rps"]:
            out["batching_gain"][str(c)] = level["throughput_rps"] / unbatched[c]["throughput_rps"]
        if c in cache_off and level["p50_ms"] and cache_off[c]["p50_ms"]:
            out["cache_gain"][str(c)] = {
                "p50_latency_off_over_on": cache_off[c]["p50_ms"] / level["p50_ms"],
                "throughput_on_over_off": (level["throughput_rps"] / cache_off[c]["throughput_rps"]
                                           if cache_off[c]["throughput_rps"] else None),
            }
    single = batched.get(1)
    model = result.get("model_only")
    if single and single["p50_ms"] and model:
        out["e2e_overhead"] = {
            "e2e_p50_ms": single["p50_ms"], "model_ms": 1000 * model["model_s"],
            "engine_ms": 1000 * model["engine_cached_s"],
            "e2e_over_model": single["p50_ms"] / (1000 * model["model_s"]),
            "e2e_over_engine": single["p50_ms"] / (1000 * model["engine_cached_s"]),
        }
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="defaults for every option (cpu without a GPU, else gpu); explicit options win")
    parser.add_argument("--device", default="auto", help="STYA2K_DEVICE of the server (auto | cpu | cuda)")
    parser.add_argument("--weights", help="default (shipped) | random | checkpoint path")
    parser.add_argument("--size", type=int, help="content side = output side (STYA2K_DEFAULT_SIDE, max_side)")
    parser.add_argument("--style-size", type=int, help="STYA2K_STYLE_SIZE")
    parser.add_argument("--concurrency", help="comma-separated concurrency levels, e.g. 1,4,16,64")
    parser.add_argument("--cache-concurrency", help="levels run again with the style cache off")
    parser.add_argument("--rounds", type=int, help="requests per level = rounds x concurrency ...")
    parser.add_argument("--min-requests", type=int, help="... at least this many ...")
    parser.add_argument("--max-requests", type=int, help="... at most this many")
    parser.add_argument("--max-seconds", type=float, help="stop issuing requests of a level after this")
    parser.add_argument("--warmup-requests", type=int, help="requests sent after start-up, not measured")
    parser.add_argument("--level-warmup", type=int, default=None, help="unmeasured rounds before each level")
    parser.add_argument("--max-batch-size", type=int, help="STYA2K_MAX_BATCH_SIZE of the batched server")
    parser.add_argument("--max-wait-ms", type=float, help="STYA2K_MAX_WAIT_MS")
    parser.add_argument("--threads", type=int, help="STYA2K_THREADS (torch intra-op threads on CPU)")
    parser.add_argument("--dtype", help="STYA2K_DTYPE: auto | float32 | bfloat16 | float16")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="STYA2K_COMPILE (torch.compile the transfer)")
    parser.add_argument("--format", default="png", choices=("png", "jpeg", "webp"), help="output format")
    parser.add_argument("--model-iters", type=int, help="timed calls of the model-only reference")
    parser.add_argument("--ready-timeout-s", type=float)
    parser.add_argument("--baseline-tree", type=Path, default=None,
                        help="paired mode: a source tree of the version to compare with (e.g. `git archive` of a "
                             "commit, extracted); both run with their own defaults, alternated --pairs times")
    parser.add_argument("--pairs", type=int, default=2, help="paired mode: before/after rounds (ABBA order)")
    parser.add_argument("--pause-pid-file", type=Path, default=None,
                        help="paired mode: SIGSTOP this pid (e.g. a training job) during each server run, SIGCONT "
                             "after it")
    parser.add_argument("--first-requests", type=int, default=2,
                        help="paired mode: sequential requests timed right after ready (a slow first one shows)")
    parser.add_argument("--baseline-git", default="", help="paired mode: the baseline's commit, for the record")
    parser.add_argument("--out", type=Path, help="JSON results (default bench/results/service-<device>.json)")
    parser.add_argument("--doc", type=Path, default=common.DOC_PATH)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args(argv)
    device = common.select_device(args.device)
    preset = PRESETS[args.preset or ("gpu" if device.type == "cuda" else "cpu")]
    for name, value in preset.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    if args.level_warmup is None:
        args.level_warmup = 1 if device.type == "cuda" else 0
    args.device = str(device) if args.device == "auto" else args.device
    args.concurrency = common.parse_int_list(args.concurrency)
    args.cache_concurrency = common.parse_int_list(args.cache_concurrency)
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = common.select_device(args.device)
    if args.threads and device.type == "cpu":
        torch.set_num_threads(args.threads)  # the reference timing uses the server's thread count
    work = Workload(synthetic_image(args.size, args.size, 1, "JPEG"), synthetic_image(512, 512, 2, "JPEG"),
                    args.size, args.format)
    result: dict[str, Any] = {
        "meta": common.machine_info(device), "command": "python -m bench.service " + " ".join(sys.argv[1:]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "content_bytes": len(work.content), "style_bytes": len(work.style), "servers": [],
    }
    started = time.monotonic()
    result["model_only"] = model_only(args, work)
    log(f"model only: {result['model_only']}")
    result["codec"] = codec_timings(args, work)
    log(f"codec: {result['codec']}")
    with tempfile.TemporaryDirectory(prefix="bench-service-") as log_dir:
        for config in server_configs(args):
            if config.concurrency:
                result["servers"].append(run_server_config(args, config, work, Path(log_dir)))
                if args.out:  # a partial file survives a run stopped at its time limit (one GPU lease, issue 14)
                    common.write_json(args.out, {**result, "partial": True, "ratios": ratios(result),
                                                 "wall_s": time.monotonic() - started})
    result["ratios"] = ratios(result)
    result["wall_s"] = time.monotonic() - started
    return result


def log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


# ------------------------------------------------------------------------------------------------ report
def render_section(runs: list[tuple[Path, dict[str, Any]]]) -> str:
    parts = ["## HTTP service (`bench/service.py`)", "",
             "Closed-loop httpx clients POST `/v1/stylize` (JPEG content at the output size, the same 512 px JPEG "
             "style every time) to `python -m service` on 127.0.0.1, started by the script. Latency is client-side, "
             "request sent to last byte. Server columns are means over the level from `/metrics` deltas; compute is "
             "per batch. `batched` = the configured max batch size, `unbatched` = `STYA2K_MAX_BATCH_SIZE=1`, "
             "`cache_off` = `STYA2K_CACHE_BYTES=0` (the style is encoded in every batch).", ""]
    parts += targets_block(runs)
    for path, data in runs:
        parts += render_run(path, data)
    return "\n".join(parts)


def targets_block(runs: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    gpu = [d for _, d in runs if d["meta"].get("gpu") and d["settings"]["size"] == 512 and d.get("mode") != "paired"]
    levels = [lvl for d in gpu for s in d["servers"] if s["label"] == "batched" for lvl in s["levels"]]
    best = max((lvl["throughput_rps"] or 0 for lvl in levels), default=None)
    c16 = [lvl for lvl in levels if lvl["concurrency"] == 16]
    not_measured = "**NOT MEASURED** (no GPU was lent to the session that ran this)"
    throughput = (f"{'MET' if best >= 300 else 'NOT MET'}: {best:.0f} img/s" if best else not_measured)
    p99 = (f"{'MET' if c16[0]['p99_ms'] <= 50 else 'NOT MET'}: {c16[0]['p99_ms']:.1f} ms" if c16 else not_measured)
    return ["### GPU targets", "", common.markdown_table(["target", "status"], [
        [">= 300 img/s at 512x512 through the HTTP service", throughput],
        ["p99 <= 50 ms at concurrency 16 (512x512)", p99]]), "",
        "To measure on a CUDA machine, from the repository root (production settings: bf16 autocast, "
        "channels_last, warm-up, batch 32; add `--compile` to try torch.compile):", "", "```",
        "python -m bench.service --preset gpu --out bench/results/service-gpu.json",
        "python -m bench.service --preset gpu --compile --out bench/results/service-gpu-compiled.json",
        "python -m bench.service --preset gpu --format jpeg --out bench/results/service-gpu-jpeg.json", "```", ""]


def render_paired(path: Path, data: dict[str, Any]) -> list[str]:
    s, summary = data["settings"], data["paired"]
    before_git = data["baseline"]["git"] or data["baseline"]["tree"]
    lines = [f"### `{path.name}`: before / after, paired", "", f"- Machine: {common.machine_line(data['meta'])}",
             f"- Command: `{data['command']}` (wall {data.get('wall_s', 0) / 60:.1f} min)",
             f"- before = git {before_git}, after = git {data['meta']['git']}; each tree's own defaults (only host, "
             f"port, output side {s['size']}, queue and deadline pinned), alternated {s['pairs']} rounds (ABBA) in "
             f"one run; content {s['size']}x{s['size']} JPEG, style 512x512 JPEG, output {s['format']}. Values are "
             "medians over the rounds.", ""]
    headers = ["", "ready after", "1st request", "2nd request",
               *[f"img/s c={c}" for c in summary["after"]["throughput"]],
               *[f"p50 c={c}" for c in summary["after"]["p50_ms"]]]
    rows = []
    for label in ("before", "after"):
        row = summary[label]
        rows.append([label, common.fmt_seconds(row["startup_s"]), common.fmt_seconds(row["first_request_s"]),
                     common.fmt_seconds(row["second_request_s"]),
                     *[f"{v:.3f}" if v else "-" for v in row["throughput"].values()],
                     *[f"{v / 1000:.2f} s" if v else "-" for v in row["p50_ms"].values()]])
    lines += [common.markdown_table(headers, rows), ""]
    speedups = ", ".join(f"c={c}: **{v:.2f}x**" for c, v in summary["speedup"].items() if v)
    lines.append(f"- Throughput after / before: {speedups}")
    after_info = next((x["info"] for x in data["servers"] if x["label"] == "after"), {})
    runtime = after_info.get("runtime")
    if runtime:
        lines.append(f"- after's runtime choice (/v1/info): dtype {runtime['dtype']} ({runtime['dtype_reason']}); "
                     f"max batch {runtime['max_batch_size']} ({runtime['max_batch_size_setting']}); threads "
                     f"{runtime['threads']}; start-up steps {runtime['startup_s']}")
    before_info = next((x["info"] for x in data["servers"] if x["label"] == "before"), {})
    if before_info:
        lines.append(f"- before: dtype {before_info.get('dtype')}, max batch "
                     f"{before_info.get('batching', {}).get('max_batch_size')}")
    per_round = "; ".join(
        f"{x['label']}#{x['round']}: " + ", ".join(f"c={lvl['concurrency']} {lvl['throughput_rps'] or 0:.3f}"
                                                   for lvl in x["levels"]) for x in data["servers"])
    lines.append(f"- Every run (img/s): {per_round}")
    return [*lines, ""]


def codec_line(codec: dict[str, Any], git: str) -> str:
    """The request-thread line of a run; a run that still timed the removed fast-conversion experiment keeps
    its numbers, as history."""
    line = (f"- Request-thread work per image at this size, in-process (median): decode + prepare "
            f"{codec['decode_style_cached_ms']:.1f} ms with the style cached, "
            f"{codec['decode_style_uncached_ms']:.1f} ms with it decoded too; output encode through the "
            f"service's `pipeline.encode` (git {git}): png {codec['encode_current_png_ms']:.1f} ms, jpeg "
            f"{codec['encode_current_jpeg_ms']:.1f} ms")
    if "encode_fast_png_ms" not in codec:
        return line + "."
    return (f"{line}; with the one-memcpy conversion then proposed (`fast_from_uint8`, since shipped as "
            f"`model.imageio.uint8_to_pil`; identical pixels: {codec['fast_identical_pixels']}): png "
            f"{codec['encode_fast_png_ms']:.1f} ms, jpeg {codec['encode_fast_jpeg_ms']:.1f} ms (ratio "
            f"{codec['encode_speedup_png']:.1f}x / {codec['encode_speedup_jpeg']:.1f}x).")


def render_run(path: Path, data: dict[str, Any]) -> list[str]:
    if data.get("mode") == "paired":
        return render_paired(path, data)
    s = data["settings"]
    model = data["model_only"]
    lines = [f"### `{path.name}`", "", f"- Machine: {common.machine_line(data['meta'])}",
             f"- Command: `{data['command']}` (wall {data.get('wall_s', 0) / 60:.1f} min)",
             f"- Content {s['size']}x{s['size']} JPEG ({data['content_bytes']} B), style 512x512 JPEG "
             f"({data['style_bytes']} B) resized to {s['style_size']}, output {s['format']}; device {s['device']}, "
             f"dtype {s['dtype']}, torch threads {s['threads'] or 'default'}, compile {s['compile']}, "
             f"max batch {s['max_batch_size']}, max wait {s['max_wait_ms']} ms, weights {s['weights']}.",
             f"- Model only, same image, in the bench process before any server started ({model['iters']} calls, "
             f"median): network {1000 * model['model_s']:.1f} ms; engine batch of one (cached style: pad, transfer, "
             f"crop, quantise, to host) {1000 * model['engine_cached_s']:.1f} ms; with the style encoded in the "
             f"batch {1000 * model['engine_uncached_s']:.1f} ms.", ""]
    codec = data.get("codec")
    if codec:
        lines += [codec_line(codec, data["meta"]["git"]), ""]
    headers = ["server", "conc.", "requests (ok)", "throughput img/s", "p50", "p90", "p99", "mean batch",
               "decode", "queue wait", "compute/batch", "encode"]
    rows = []
    for server in data["servers"]:
        for lvl in server["levels"]:
            srv = lvl["server"]

            def ms(value: float | None) -> str:
                return "-" if value is None else f"{value:.1f} ms"

            rows.append([server["label"], lvl["concurrency"], f"{lvl['requests']} ({lvl['ok']})",
                         f"{lvl['throughput_rps']:.2f}" if lvl["throughput_rps"] else "-", ms(lvl["p50_ms"]),
                         ms(lvl["p90_ms"]), ms(lvl["p99_ms"]),
                         f"{srv['mean_batch_size']:.2f}" if srv["mean_batch_size"] else "-", ms(srv["decode_ms"]),
                         ms(srv["queue_wait_ms"]), ms(srv["compute_ms_per_batch"]), ms(srv["encode_ms"])])
    lines += [common.markdown_table(headers, rows), ""]
    r = data.get("ratios", {})
    if r.get("batching_gain"):
        gains = ", ".join(f"c={c}: **{g:.2f}x**" for c, g in r["batching_gain"].items())
        lines.append(f"- Batching gain (batched / unbatched throughput): {gains}")
    if r.get("e2e_overhead"):
        e = r["e2e_overhead"]
        lines.append(f"- End-to-end overhead at concurrency 1: e2e p50 {e['e2e_p50_ms']:.1f} ms / model only "
                     f"{e['model_ms']:.1f} ms = **{e['e2e_over_model']:.2f}x** (over the engine batch of one: "
                     f"{e['e2e_over_engine']:.2f}x)")
    for c, g in r.get("cache_gain", {}).items():
        tput = g["throughput_on_over_off"]
        lines.append(f"- Style cache at c={c}: p50 latency off / on = **{g['p50_latency_off_over_on']:.2f}x**"
                     + (f", throughput on / off = {tput:.2f}x" if tput else ""))
    return [*lines, ""]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C: the servers are stopped and a paused job resumed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    device = common.select_device(args.device)
    out = args.out or common.RESULTS_DIR / f"service-{device.type}.json"
    result = run_paired(args) if args.baseline_tree else run(args)
    common.write_json(out, result)
    log(f"wrote {out}")
    if not args.no_doc:
        runs = common.load_results("service", out.parent)
        if out.parent != common.RESULTS_DIR or not any(p == out for p, _ in runs):
            runs = [(out, result)]
        common.update_doc_section(args.doc, SECTION, render_section(runs))
        log(f"updated {args.doc}")


if __name__ == "__main__":
    main()
