"""Model-only benchmark: images/s, peak memory and distance to the roofline floor of StyA2K inference.

    python -m bench.model --preset cpu            # what fits on a small shared CPU box (~10 min)
    python -m bench.model --preset gpu            # the full grid on a CUDA device
    python -m bench.model --preset smoke --out /tmp/x.json --doc /tmp/B.md   # seconds; used by tests/bench

Experiments (``--experiments``, comma-separated):
  flops       FLOPs of one stylization (torch.utils.flop_counter.FlopCounterMode) at every benchmarked size
  roofline    measured dense matmul throughput per dtype on the same device: floor = FLOPs / throughput
  throughput  content sizes x batch sizes x dtypes (x style sizes), cached style features, eager, A2K
  cache       with vs without cached style features (style encoding inside the timed call), per style size
  arch        A2K vs the all-to-all ablation (fused SDPA, as in model/) vs all-to-all with the attention matrix
              materialised (bmm + softmax, like AdaAttN/SANet reference code); style size = content size
  compile     eager vs torch.compile (and CUDA graphs on a GPU) for the same shapes
  threads     CPU only: the same config with different torch intra-op thread counts

``--style-sizes 256,384,512`` repeats the throughput and cache configs for each style side (the service's
STYA2K_STYLE_SIZE; issue 33): s/image and peak memory of the style size at inference, e.g.
``python -m bench.model --experiments flops,cache --cache-sizes 512 --style-sizes 256,384,512``.

Each timed config runs in a fresh subprocess on CPU (peak memory = resident-set high-water mark) and in
this process on CUDA (peak memory = torch.cuda.max_memory_allocated; out-of-memory is caught and recorded).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from bench import common
from bench.common import DTYPES

SECTION = "bench/model.py"
EXPERIMENTS = ("flops", "roofline", "throughput", "cache", "arch", "compile", "threads")
ARCHS = ("a2k", "all_to_all", "all_to_all_materialised")
MODES = ("eager", "compile", "cudagraph")
HEADS = 8
ATTENTION_LAYERS = ((4, 256), (8, 512), (16, 512))  # (stride, channels) of relu3_1, relu4_1, relu5_1


# ------------------------------------------------------------------------------------------------ configs
@dataclass(frozen=True)
class Config:
    """One timed measurement."""

    experiment: str
    arch: str = "a2k"
    size: int = 512  # content side (square)
    style_size: int = 256
    batch: int = 1
    dtype: str = "fp32"  # fp32 = no autocast; bf16 / fp16 = torch.autocast
    cached: bool = True  # style features encoded once outside the timed call
    mode: str = "eager"
    threads: int = 0  # torch intra-op threads (CPU); 0 = leave torch's default
    channels_last: bool = False


@dataclass(frozen=True)
class Options:
    """How each config is run."""

    device: str
    weights: str  # random | default | a checkpoint path
    warmup: int
    min_iters: int
    max_iters: int
    budget_s: float  # stop repeating a config once its timed calls used this much
    timeout_s: float  # CPU subprocess wall limit per config
    compile_mode: str
    max_attention_bytes: float  # skip an all-to-all whose score matrix would exceed this (0 = no limit)
    cudnn_benchmark: bool = True  # let cuDNN autotune conv algorithms per shape (CUDA only)


PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "sizes": "256,512,1024", "batches": "1,2,4", "dtypes": "fp32,bf16", "main_dtype": "fp32",
        "max_batch_pixels": 4 * 512 * 512, "cache_sizes": "256,512", "arch_sizes": "256,512,1024",
        "compile_sizes": "256", "compile_batches": "1", "compile_modes": "eager,compile", "thread_counts": "1,2",
        "warmup": 1, "min_iters": 1, "max_iters": 3, "budget_s": 4.0, "timeout_s": 480.0, "threads": 1,
        "max_attention_gib": 4.0, "matmul_n": 2048, "weights": "default",
        "experiments": ",".join(EXPERIMENTS),
    },
    "gpu": {
        "sizes": "256,512,1024,2048,4096", "batches": "1,2,4,8,16,32", "dtypes": "fp32,bf16,fp16",
        "main_dtype": "bf16", "max_batch_pixels": 32 * 1024 * 1024, "cache_sizes": "512,1024",
        "arch_sizes": "256,512,1024,2048,4096", "compile_sizes": "512", "compile_batches": "1,8,32",
        "compile_modes": "eager,compile,cudagraph", "thread_counts": "", "warmup": 3, "min_iters": 5,
        "max_iters": 50, "budget_s": 2.0, "timeout_s": 600.0, "threads": 0, "max_attention_gib": 0.0,
        "matmul_n": 8192, "weights": "default",
        "experiments": "flops,roofline,throughput,cache,arch,compile",
    },
    # One GPU lease (bench/gpu/inference_lease.sh, issue 14): the gpu grid cut to fit minutes; the lease
    # command picks the experiments and sizes of each of its steps.
    "gpu-lease": {
        "sizes": "512", "batches": "1,2,4,8,16,32,64", "dtypes": "fp32,bf16,fp16", "main_dtype": "fp16",
        "max_batch_pixels": 64 * 512 * 512, "cache_sizes": "512,1024", "arch_sizes": "512", "compile_sizes": "512",
        "compile_batches": "8", "compile_modes": "eager,compile,cudagraph", "thread_counts": "", "warmup": 2,
        "min_iters": 3, "max_iters": 20, "budget_s": 0.5, "timeout_s": 120.0, "threads": 0,
        "max_attention_gib": 0.0, "matmul_n": 8192, "weights": "default", "experiments": "flops,roofline,throughput",
    },
    "smoke": {
        "sizes": "64", "batches": "1", "dtypes": "fp32", "main_dtype": "fp32", "max_batch_pixels": 64 * 64,
        "cache_sizes": "64", "arch_sizes": "64", "compile_sizes": "", "compile_batches": "1",
        "compile_modes": "eager", "thread_counts": "", "warmup": 0, "min_iters": 1, "max_iters": 1,
        "budget_s": 0.0, "timeout_s": 120.0, "threads": 1, "max_attention_gib": 1.0, "matmul_n": 256,
        "weights": "random", "experiments": "flops,roofline,throughput,cache,arch",
    },
}


# ------------------------------------------------------------------------------------------------ the model
def build_net(arch: str, weights: str, device: torch.device, channels_last: bool) -> torch.nn.Module:
    """A StyA2K net in eval mode. Trained weights only exist for A2K; speed does not depend on the values."""
    import model

    model_arch = "all_to_all" if arch.startswith("all_to_all") else arch
    if model_arch == "a2k" and weights != "random":
        net = model.load_model(None if weights == "default" else weights, device="cpu")
    else:
        net = model.StyA2K(model.ModelConfig(arch=model_arch))
    net = net.eval().requires_grad_(False).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def materialised_all_to_all(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """All-to-all attention computed the way AdaAttN/SANet reference code does: the full score matrix.

    q: (B, Cq, H, W), k: (B, Cq, Hs, Ws), v: (B, Cv, Hs, Ws) -> (B, Cv, H, W). Same maths as
    model.functional.all_to_all (raw dot products, no 1/sqrt(d)), but (B, h, H*W, Hs*Ws) scores live in memory.
    """
    b, _, hh, ww = q.shape

    def tokens(x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, h, H*W, C/h)
        return x.reshape(b, heads, x.shape[1] // heads, -1).transpose(-1, -2)

    scores = tokens(q) @ tokens(k).transpose(-1, -2)  # (B, h, Nc, Ns)
    out = scores.softmax(dim=-1) @ tokens(v)  # (B, h, Nc, dv)
    return out.transpose(-1, -2).reshape(b, v.shape[1], hh, ww)


@contextlib.contextmanager
def attention_impl(arch: str) -> Iterator[None]:
    """Swap in the materialised all-to-all for that ablation; restores model.functional afterwards."""
    from model import functional

    if arch != "all_to_all_materialised":
        yield
        return
    original = functional.all_to_all
    functional.all_to_all = materialised_all_to_all
    try:
        yield
    finally:
        functional.all_to_all = original


def attention_matrix_bytes(size: int, style_size: int, batch: int, dtype: str) -> int:
    """Bytes of the largest all-to-all score matrix (B, heads, Nc, Ns) if materialised (relu3_1 dominates)."""
    element = torch.empty((), dtype=DTYPES[dtype]).element_size()
    return max(batch * HEADS * math.ceil(size / s) ** 2 * math.ceil(style_size / s) ** 2 * element
               for s, _ in ATTENTION_LAYERS)


def precision(device: torch.device, dtype: str, cache_enabled: bool = True) -> contextlib.AbstractContextManager:
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype], cache_enabled=cache_enabled)


def make_call(net: torch.nn.Module, cfg: Config, device: torch.device,
              compile_mode: str = "default") -> Callable[[], torch.Tensor]:
    """The timed call: stylize from cached features, or encode the style inside the call."""
    generator = torch.Generator().manual_seed(0)
    content = torch.rand(cfg.batch, 3, cfg.size, cfg.size, generator=generator).to(device)  # (B, 3, H, W)
    style = torch.rand(cfg.batch, 3, cfg.style_size, cfg.style_size, generator=generator).to(device)
    if cfg.channels_last:
        content = content.contiguous(memory_format=torch.channels_last)
        style = style.contiguous(memory_format=torch.channels_last)
    alpha = torch.ones(cfg.batch, device=device)  # a device tensor, as the service passes: no host copy per call
    if not cfg.cached:
        return lambda: net.stylize(content, style, alpha)
    with torch.inference_mode(), precision(device, cfg.dtype):
        features = net.encode_style(style)
    transfer = net.stylize_from_features
    if cfg.mode == "compile":
        from torch import _dynamo

        _dynamo.reset()  # every config compiles its own shapes; never hit the recompile limit
        transfer = torch.compile(net.stylize_from_features, dynamic=False, mode=compile_mode)
    return lambda: transfer(content, [features], None, alpha)


def graph_call(fn: Callable[[], torch.Tensor], device: torch.device) -> Callable[[], torch.Tensor]:
    """Capture ``fn`` (static shapes and input tensors) in a CUDA graph; the returned call replays it."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):  # cuDNN autotuning and allocator warm-up must happen before capture
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fn()

    def replay() -> torch.Tensor:
        graph.replay()
        return static_out

    return replay


# ------------------------------------------------------------------------------------------------ measuring
def run_config(cfg: Config, opts: Options, nets: dict[tuple[str, bool], torch.nn.Module]) -> dict[str, Any]:
    """Time one config in this process; returns the result row (status ok / oom / error)."""
    device = common.select_device(opts.device)
    torch.backends.cudnn.benchmark = opts.cudnn_benchmark
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    key = (cfg.arch, cfg.channels_last)
    if key not in nets:
        nets[key] = build_net(cfg.arch, opts.weights, device, cfg.channels_last)
    net = nets[key]
    row: dict[str, Any] = {**asdict(cfg), "threads_used": torch.get_num_threads()}
    probe = common.PeakMemory(device)
    try:
        with attention_impl(cfg.arch), torch.inference_mode():
            call = make_call(net, cfg, device, opts.compile_mode)
            gc.collect()
            probe.start()
            with precision(device, cfg.dtype, cache_enabled=cfg.mode != "cudagraph"):
                if cfg.mode == "cudagraph":
                    call = graph_call(call, device)
                first_started = time.perf_counter()
                if cfg.mode == "compile":  # the first call compiles: time it separately
                    call()
                    common.synchronize(device)
                    row["compile_s"] = time.perf_counter() - first_started
                timing = common.time_calls(call, device, warmup=opts.warmup, min_iters=opts.min_iters,
                                           max_iters=opts.max_iters, budget_s=opts.budget_s)
        delta, absolute = probe.peak_bytes()
        row.update(status="ok", **timing.as_dict(), peak_mem_bytes=delta, peak_mem_abs_bytes=absolute,
                   mem_method=probe.method)
    except torch.OutOfMemoryError as exc:
        row.update(status="oom", error=str(exc).splitlines()[0][:300])
    except Exception as exc:  # recorded, never fatal: one broken config must not lose the others
        row.update(status="error", error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
    finally:
        if device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
    return row


def run_isolated(cfg: Config, opts: Options) -> dict[str, Any]:
    """Run one config in a fresh Python process (clean memory high-water mark, bounded wall time)."""
    payload = json.dumps({"config": asdict(cfg), "options": asdict(opts)})
    command = [sys.executable, "-m", "bench.model", "--worker", payload]
    try:
        proc = subprocess.run(command, cwd=common.REPO_ROOT, capture_output=True, text=True, timeout=opts.timeout_s)
    except subprocess.TimeoutExpired:
        return {**asdict(cfg), "status": "timeout", "error": f"did not finish within {opts.timeout_s:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        status = "killed" if proc.returncode < 0 else "error"
        return {**asdict(cfg), "status": status, "error": tail[0][:300]}
    return json.loads(lines[-1])


def worker_main(payload: str) -> None:
    data = json.loads(payload)
    row = run_config(Config(**data["config"]), Options(**data["options"]), {})
    sys.stdout.write(json.dumps(row) + "\n")


# ------------------------------------------------------------------------------------------------ FLOPs
def _cpu_flash_attention_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any,
                               out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


@functools.cache
def _meta_net(arch: str) -> torch.nn.Module:
    """The network on the meta device: shapes without storage or compute."""
    import model

    return model.StyA2K(model.ModelConfig(arch=arch)).eval().to("meta")


def count_flops(arch: str, size: int, style_size: int, cached: bool, batch: int = 1) -> dict[str, Any]:
    """FLOPs of one call (meta tensors: shapes only, no compute), split by operator."""
    net = _meta_net("all_to_all" if arch.startswith("all_to_all") else arch)
    content = torch.empty(batch, 3, size, size, device="meta")
    style = torch.empty(batch, 3, style_size, style_size, device="meta")
    # The CPU build runs SDPA as its own flash kernel, unknown to the counter; count it like the others.
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flops}
    with attention_impl(arch), torch.inference_mode():
        features = None if not cached else net.encode_style(style)
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            if cached:
                net.stylize_from_features(content, [features])
            else:
                net.stylize(content, style)
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return {"arch": arch, "size": size, "style_size": style_size, "cached": cached, "batch": batch,
            "flops": int(counter.get_total_flops()), "by_op": by_op}


class FlopTable:
    """Per-image FLOPs by (arch, size, style_size, cached), computed on demand."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int, int, bool], dict[str, Any]] = {}

    def get(self, arch: str, size: int, style_size: int, cached: bool) -> int:
        key = (arch, size, style_size, cached)
        if key not in self.rows:
            self.rows[key] = count_flops(arch, size, style_size, cached)
        return self.rows[key]["flops"]


# ------------------------------------------------------------------------------------------------ experiments
def plan(args: argparse.Namespace, experiment: str) -> list[Config]:
    """The configs of one experiment, in run order (small to large so failures can stop a series)."""
    main = args.main_dtype
    fast_cl = common.select_device(args.device).type == "cuda"  # channels_last pays off on GPUs only
    base = Config(experiment, dtype=main, threads=args.threads, channels_last=fast_cl, style_size=args.style_size)
    if experiment == "throughput":
        return [replace(base, size=s, batch=b, dtype=d, style_size=ss) for d in args.dtypes for ss in args.style_sizes
                for s in args.sizes for b in args.batches if s * s * b <= args.max_batch_pixels]
    if experiment == "cache":
        return [replace(base, size=s, cached=c, style_size=ss) for ss in args.style_sizes for s in args.cache_sizes
                for c in (True, False)]
    if experiment == "arch":
        return [replace(base, arch=a, size=s, style_size=s) for s in args.arch_sizes for a in ARCHS]
    if experiment == "compile":
        return [replace(base, size=s, batch=b, mode=m) for s in args.compile_sizes for b in args.compile_batches
                for m in args.compile_modes]
    if experiment == "threads":
        return [replace(base, size=args.sizes[0], threads=t) for t in args.thread_counts]
    return []


def skip_reason(cfg: Config, done: list[dict[str, Any]], opts: Options, flops: FlopTable) -> str | None:
    """Why a config is not run: a smaller sibling already failed, memory guard, or a predicted overrun."""
    device = common.select_device(opts.device)
    # The guard covers the fused all-to-all on CPU as well: there SDPA measurably materialised the scores
    # (18 GiB peak at 512 px on torch 2.13), which could take a shared machine down. That was with strided tokens
    # (SDPA's math path); since the tokens reach the fused kernel (head dim innermost) it may not, but that is not
    # re-measured, so the guard stays.
    guarded = cfg.arch == "all_to_all_materialised" or (cfg.arch == "all_to_all" and device.type == "cpu")
    if guarded and opts.max_attention_bytes:
        need = attention_matrix_bytes(cfg.size, cfg.style_size, cfg.batch, cfg.dtype)
        if need > opts.max_attention_bytes:
            return (f"the score matrix alone would take {common.fmt_bytes(need)} (> the "
                    f"{common.fmt_bytes(opts.max_attention_bytes)} guard for this shared machine)")
    for row in done:
        same_series = all(row[k] == getattr(cfg, k) for k in ("experiment", "arch", "dtype", "mode", "cached"))
        smaller = row["size"] * row["size"] * row["batch"] < cfg.size * cfg.size * cfg.batch
        if same_series and smaller and row["status"] in ("oom", "timeout", "killed", "skipped"):
            return f"a smaller config of this series ended with {row['status']}"
    if device.type == "cpu":  # predict from the achieved FLOP rate of the same series at a smaller size
        rates = [flops.get(r["arch"], r["size"], r["style_size"], r["cached"]) * r["batch"] / r["median_s"]
                 for r in done if r["status"] == "ok" and r["experiment"] == cfg.experiment
                 and r["arch"] == cfg.arch and r["dtype"] == cfg.dtype]
        if rates:
            predicted = flops.get(cfg.arch, cfg.size, cfg.style_size, cfg.cached) * cfg.batch / min(rates)
            if predicted * (1 + min(opts.warmup, 1)) > opts.timeout_s:
                return f"predicted {predicted:.0f} s per call exceeds the {opts.timeout_s:.0f} s limit"
    return None


def annotate(row: dict[str, Any], flops: FlopTable, matmul: dict[str, dict[str, Any]], device: torch.device) -> None:
    """Add images/s, FLOPs, the roofline floor and the measured time as a multiple / fraction of it."""
    row["flops_per_image"] = flops.get(row["arch"], row["size"], row["style_size"], row["cached"])
    if row.get("status") != "ok":
        return
    per_image = row["median_s"] / row["batch"]
    row["s_per_image"] = per_image
    row["images_per_s"] = 1.0 / per_image
    row["achieved_flops_per_s"] = row["flops_per_image"] / per_image
    ceiling = matmul.get(roofline_dtype(row["dtype"], device))
    if ceiling:
        floor = row["flops_per_image"] / ceiling["flops_per_s"]
        row["floor_s_per_image"] = floor
        row["x_floor"] = per_image / floor  # 1.0 = at the floor; target <= 2 on GPU
        row["fraction_of_floor"] = floor / per_image  # share of the device's matmul throughput achieved


def roofline_dtype(dtype: str, device: torch.device) -> str:
    # On CUDA, fp32 convolutions run in TF32 by default (torch.backends.cudnn.allow_tf32), so their ceiling
    # is the TF32 matmul rate.
    return "tf32" if dtype == "fp32" and device.type == "cuda" else dtype


def measure_matmul(device: torch.device, dtypes: list[str], n: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in dtypes:
        out[name] = common.matmul_flops_per_s(device, DTYPES[name], n)
    if device.type == "cuda" and "fp32" in dtypes:
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            out["tf32"] = common.matmul_flops_per_s(device, torch.float32, n)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
    return out


# ------------------------------------------------------------------------------------------------ driver
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="defaults for every grid option (cpu if no GPU, else gpu); explicit options win")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--experiments", help=f"comma-separated subset of {','.join(EXPERIMENTS)}")
    parser.add_argument("--sizes", help="content sides for throughput, e.g. 256,512,1024")
    parser.add_argument("--batches", help="batch sizes, e.g. 1,2,4,8,16,32")
    parser.add_argument("--dtypes", help="fp32,bf16,fp16 (bf16/fp16 = torch.autocast)")
    parser.add_argument("--main-dtype", help="dtype of the cache / arch / compile / threads experiments")
    parser.add_argument("--max-batch-pixels", type=int, help="skip size x size x batch above this")
    parser.add_argument("--style-size", type=int, default=256, help="style side (the service's default: 256)")
    parser.add_argument("--style-sizes", help="style sides for the throughput and cache experiments, e.g. "
                                              "256,384,512 (default: --style-size)")
    parser.add_argument("--cache-sizes", help="content sides for cached vs uncached styles")
    parser.add_argument("--arch-sizes", help="content (= style) sides for A2K vs all-to-all")
    parser.add_argument("--compile-sizes", help="content sides for eager vs compile (empty = none)")
    parser.add_argument("--compile-batches", help="batch sizes for eager vs compile")
    parser.add_argument("--compile-modes", help="eager,compile,cudagraph")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode (default, max-autotune, ...)")
    parser.add_argument("--thread-counts", help="torch thread counts for the threads experiment (CPU)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads for every config (0 = default)")
    parser.add_argument("--flop-size", type=int, default=512, help="content side of the headline FLOP count")
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--min-iters", type=int)
    parser.add_argument("--max-iters", type=int)
    parser.add_argument("--budget-s", type=float, help="time budget of the timed calls of one config")
    parser.add_argument("--timeout-s", type=float, help="wall limit of one config (CPU subprocess)")
    parser.add_argument("--max-attention-gib", type=float, help="memory guard for the materialised all-to-all")
    parser.add_argument("--matmul-n", type=int, help="side of the square matmul used for the roofline")
    parser.add_argument("--weights", help="default (shipped A2K weights) | random | checkpoint path")
    parser.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True,
                        help="torch.backends.cudnn.benchmark for every config (CUDA; shapes are fixed per config)")
    parser.add_argument("--isolate", choices=("auto", "subprocess", "inprocess"), default="auto",
                        help="auto: a fresh subprocess per config on CPU, in-process on CUDA")
    parser.add_argument("--out", type=Path, help="JSON results (default bench/results/model-<device>.json)")
    parser.add_argument("--doc", type=Path, default=common.DOC_PATH, help="markdown file whose section to rewrite")
    parser.add_argument("--no-doc", action="store_true", help="write the JSON only")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return args
    device = common.select_device(args.device)
    preset = PRESETS[args.preset or ("gpu" if device.type == "cuda" else "cpu")]
    for name, value in preset.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    for name in ("sizes", "batches", "cache_sizes", "arch_sizes", "compile_sizes", "compile_batches",
                 "thread_counts"):
        setattr(args, name, common.parse_int_list(getattr(args, name)))
    args.style_sizes = common.parse_int_list(args.style_sizes) if args.style_sizes else [args.style_size]
    if min(args.style_sizes, default=0) < 16:
        raise SystemExit(f"--style-sizes {args.style_sizes}: every style side must be at least 16 px")
    args.dtypes = common.parse_choice_list(args.dtypes, DTYPES, "dtype")
    args.compile_modes = common.parse_choice_list(args.compile_modes, MODES, "mode")
    args.experiments = common.parse_choice_list(args.experiments, EXPERIMENTS, "experiment")
    if args.main_dtype not in DTYPES:
        raise SystemExit(f"--main-dtype {args.main_dtype!r}; allowed: {', '.join(DTYPES)}")
    if device.type == "cpu":
        args.compile_modes = [m for m in args.compile_modes if m != "cudagraph"]
    else:
        args.thread_counts = []
    return args


def options_from(args: argparse.Namespace) -> Options:
    return Options(device=args.device, weights=args.weights, warmup=args.warmup, min_iters=args.min_iters,
                   max_iters=args.max_iters, budget_s=args.budget_s, timeout_s=args.timeout_s,
                   compile_mode=args.compile_mode, max_attention_bytes=args.max_attention_gib * 2**30,
                   cudnn_benchmark=args.cudnn_benchmark)


def run_experiments(args: argparse.Namespace) -> dict[str, Any]:
    device = common.select_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    opts = options_from(args)
    isolate = args.isolate == "subprocess" or (args.isolate == "auto" and device.type == "cpu")
    flops = FlopTable()
    result: dict[str, Any] = {"meta": common.machine_info(device), "command": command_line(),
                              "options": asdict(opts), "isolated": isolate, "style_size": args.style_size,
                              "style_sizes": args.style_sizes,
                              "experiments": args.experiments, "results": []}
    started = time.monotonic()
    matmul: dict[str, dict[str, Any]] = {}
    if "roofline" in args.experiments:
        matmul = measure_matmul(device, args.dtypes, args.matmul_n)
        result["matmul"] = matmul
        log(f"matmul: { {k: round(v['flops_per_s'] / 1e9, 1) for k, v in matmul.items()} } GFLOP/s")
    if "flops" in args.experiments:
        result["flops"] = {
            "headline": count_flops("a2k", args.flop_size, args.flop_size, cached=False),
            "headline_cached_style_256": count_flops("a2k", args.flop_size, 256, cached=True),
        }
    nets: dict[tuple[str, bool], torch.nn.Module] = {}
    for experiment in args.experiments:
        for cfg in plan(args, experiment):
            reason = skip_reason(cfg, result["results"], opts, flops)
            if reason:
                row = {**asdict(cfg), "status": "skipped", "error": reason}
            else:
                row = run_isolated(cfg, opts) if isolate else run_config(cfg, opts, nets)
            if cfg.arch.startswith("all_to_all"):
                row["attention_matrix_bytes"] = attention_matrix_bytes(cfg.size, cfg.style_size, cfg.batch,
                                                                       cfg.dtype)
            annotate(row, flops, matmul, device)
            result["results"].append(row)
            log(describe(row))
            if args.out:  # a partial file survives a run stopped at its time limit (one GPU lease, issue 14)
                common.write_json(args.out, {**result, "partial": True, "wall_s": time.monotonic() - started})
    result["flop_table"] = list(flops.rows.values())
    result["wall_s"] = time.monotonic() - started
    return result


def command_line() -> str:
    return "python -m bench.model " + " ".join(sys.argv[1:])


def log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def describe(row: dict[str, Any]) -> str:
    head = (f"[{row['experiment']}] {row['arch']} {row['size']}px style {row['style_size']} b{row['batch']} "
            f"{row['dtype']} {'cached' if row['cached'] else 'uncached'} {row['mode']} t{row.get('threads_used', '')}")
    if row["status"] != "ok":
        return f"{head}: {row['status']} ({row.get('error', '')})"
    return (f"{head}: {common.fmt_seconds(row['median_s'])}/batch, {row['images_per_s']:.2f} img/s, "
            f"peak +{common.fmt_bytes(row['peak_mem_bytes'])}, x_floor {row.get('x_floor', float('nan')):.1f}")


# ------------------------------------------------------------------------------------------------ report
def render_section(results: list[tuple[Path, dict[str, Any]]]) -> str:
    parts = ["## Model alone (`bench/model.py`)", "",
             "Images/s of the network only (tensors already on the device, no HTTP, no image codecs). "
             "`x floor` = measured time per image / roofline floor, where floor = FLOPs of the call "
             "(`torch.utils.flop_counter.FlopCounterMode`) / measured dense matmul throughput of the same device "
             "and dtype (so 1.0 would mean running every FLOP at matmul speed; lower is better, target <= 2 on GPU). "
             "`% of floor` = floor / measured. Peak memory: see the method line of each run.", ""]
    parts += targets_block(results)
    for path, data in results:
        parts += render_run(path, data)
    return "\n".join(parts)


def targets_block(results: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    gpu_rows = [r for _, d in results if d["meta"].get("gpu") for r in d["results"]
                if r.get("status") == "ok" and r["size"] == 512 and r["arch"] == "a2k" and r["cached"]]
    best = min(gpu_rows, key=lambda r: r["x_floor"], default=None) if gpu_rows else None
    if best and "x_floor" in best:
        status = (f"{'MET' if best['x_floor'] <= 2 else 'NOT MET'}: best {best['x_floor']:.2f}x floor "
                  f"({best['images_per_s']:.0f} img/s, b{best['batch']} {best['dtype']} {best['mode']})")
    else:
        status = "**NOT MEASURED** (no GPU was lent to the session that ran this)"
    return ["### GPU target", "",
            common.markdown_table(["target", "status"], [["model alone at 512x512 within 2x of the roofline floor",
                                                          status]]), "",
            "To measure on a CUDA machine (H100/H200), from the repository root:", "", "```",
            "python -m bench.model --preset gpu --out bench/results/model-gpu.json",
            "# if one command must stay under 10 minutes, split it:",
            "python -m bench.model --preset gpu --experiments flops,roofline,throughput "
            "--out bench/results/model-gpu-throughput.json",
            "python -m bench.model --preset gpu --experiments roofline,cache,arch,compile "
            "--out bench/results/model-gpu-rest.json", "```", ""]


def render_run(path: Path, data: dict[str, Any]) -> list[str]:
    meta, rows = data["meta"], data["results"]
    methods = sorted({r["mem_method"] for r in rows if r.get("mem_method")})
    style_sizes = data.get("style_sizes") or [data["style_size"]]  # results from before --style-sizes: one side
    style = (f"{style_sizes[0]} px unless stated" if len(style_sizes) == 1
             else f"{', '.join(map(str, style_sizes))} px (the 'style' column)")
    lines = [f"### `{path.name}`", "", f"- Machine: {common.machine_line(meta)}",
             f"- Command: `{data['command']}` (wall {data.get('wall_s', 0) / 60:.1f} min)",
             f"- Weights: `{data['options']['weights']}` (A2K; the all-to-all variants are randomly initialised: "
             f"speed does not depend on the values). Style side: {style}. Peak memory: "
             f"{', '.join(methods) or '-'}; it is the growth over the loaded model and inputs.", ""]
    lines += render_flops(data) + render_matmul(data)
    titles = {"throughput": "Throughput (cached style features, eager, A2K)",
              "cache": "Cached vs uncached style features (uncached = style encoding inside the call)",
              "arch": "A2K vs all-to-all (style = content size; batch 1)",
              "compile": "Eager vs torch.compile / CUDA graphs",
              "threads": "CPU threads (same config)"}
    for experiment, title in titles.items():
        chosen = [r for r in rows if r["experiment"] == experiment]
        if chosen:
            lines += [f"#### {title}", "", result_table(chosen, experiment), ""]
            lines += ratio_lines(chosen, experiment)
    return lines


def render_flops(data: dict[str, Any]) -> list[str]:
    if "flops" not in data:
        return []
    head, cached = data["flops"]["headline"], data["flops"]["headline_cached_style_256"]
    ops = ", ".join(f"{op.removeprefix('aten.')} {n / 1e9:.1f}" for op, n in head["by_op"].items())
    return [f"- FLOPs of one {head['size']}x{head['size']} stylization (style {head['style_size']}, encoding "
            f"included): **{head['flops'] / 1e9:.1f} GFLOP** ({ops}); with cached features of a "
            f"{cached['style_size']} px style: {cached['flops'] / 1e9:.1f} GFLOP.", ""]


def render_matmul(data: dict[str, Any]) -> list[str]:
    if "matmul" not in data:
        return []
    cells = ", ".join(f"{k} {v['flops_per_s'] / 1e12:.3f} TFLOP/s" for k, v in data["matmul"].items())
    n = next(iter(data["matmul"].values()))["n"]
    return [f"- Roofline ceiling (measured {n}x{n} matmul, best of the repeats): {cells}.", ""]


def result_table(rows: list[dict[str, Any]], experiment: str) -> str:
    headers = ["arch", "size", "style", "batch", "dtype", "cached", "mode", "threads", "s/batch", "img/s",
               "peak mem", "GFLOP/img", "x floor", "% of floor", "note"]
    body = []
    for r in rows:
        ok = r.get("status") == "ok"
        note = "" if ok else f"{r['status']}: {r.get('error', '')}"
        if ok and r.get("warmup_counted"):
            note = "1 call (warm-up counted)"
        if r.get("compile_s"):
            note = (note + "; " if note else "") + f"compile {r['compile_s']:.0f} s"
        if r.get("attention_matrix_bytes") and r["arch"] == "all_to_all_materialised":
            note = (note + "; " if note else "") + f"score matrix {common.fmt_bytes(r['attention_matrix_bytes'])}"
        body.append([r["arch"], r["size"], r["style_size"], r["batch"], r["dtype"], "yes" if r["cached"] else "no",
                     r["mode"], r.get("threads_used", r.get("threads", "")),
                     common.fmt_seconds(r.get("median_s")) if ok else "-",
                     f"{r['images_per_s']:.2f}" if ok else "-",
                     common.fmt_bytes(r.get("peak_mem_bytes")) if ok else "-",
                     f"{r['flops_per_image'] / 1e9:.0f}" if r.get("flops_per_image") else "-",
                     f"{r['x_floor']:.1f}" if "x_floor" in r else "-",
                     f"{100 * r['fraction_of_floor']:.0f}%" if "fraction_of_floor" in r else "-", note])
    return common.markdown_table(headers, body)


def ratio_lines(rows: list[dict[str, Any]], experiment: str) -> list[str]:
    ok = [r for r in rows if r.get("status") == "ok"]
    out = []
    if experiment == "cache":
        style_sizes = {r["style_size"] for r in ok}
        for size, style_size in sorted({(r["size"], r["style_size"]) for r in ok}):
            pair = {r["cached"]: r for r in ok if (r["size"], r["style_size"]) == (size, style_size)}
            if len(pair) == 2:
                ratio = pair[False]["median_s"] / pair[True]["median_s"]
                style = f" (style {style_size} px)" if len(style_sizes) > 1 else ""
                out.append(f"- {size}px{style}: uncached / cached time = **{ratio:.2f}x**")
    if experiment == "arch":
        for size in sorted({r["size"] for r in ok}):
            base = next((r for r in ok if r["size"] == size and r["arch"] == "a2k"), None)
            for r in ok:
                if base and r["size"] == size and r["arch"] != "a2k":
                    out.append(f"- {size}px: {r['arch']} / A2K time = **{r['median_s'] / base['median_s']:.2f}x**, "
                               f"peak memory {common.fmt_bytes(r['peak_mem_bytes'])} vs "
                               f"{common.fmt_bytes(base['peak_mem_bytes'])}")
    if experiment == "compile":
        for size, batch in sorted({(r["size"], r["batch"]) for r in ok}):
            eager = next((r for r in ok if (r["size"], r["batch"], r["mode"]) == (size, batch, "eager")), None)
            for r in ok:
                if eager and (r["size"], r["batch"]) == (size, batch) and r["mode"] != "eager":
                    out.append(f"- {size}px b{batch}: {r['mode']} speed-up over eager = "
                               f"**{eager['median_s'] / r['median_s']:.2f}x**")
    return [*out, ""] if out else []


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return
    device = common.select_device(args.device)
    out = args.out or common.RESULTS_DIR / f"model-{device.type}.json"
    result = run_experiments(args)
    common.write_json(out, result)
    log(f"wrote {out}")
    if not args.no_doc:
        runs = [(p, d) for p, d in common.load_results("model", out.parent)]
        if out.parent != common.RESULTS_DIR or not any(p == out for p, _ in runs):
            runs = [(out, result)]
        common.update_doc_section(args.doc, SECTION, render_section(runs))
        log(f"updated {args.doc}")


if __name__ == "__main__":
    main()
