"""Paired backend benchmark (issue 29): every inference backend against the tuned torch path, in one process.

1. Model: seconds per image of the engine's own batch path (torch: NHWC, the heap, the auto precision; the graph
   backends: onnxruntime, onnxruntime-int8, openvino, openvino-int8), in alternating rounds so all see the same
   machine state; and each backend's quality cost against torch: max / mean / p99 abs difference in levels of 255
   and LPIPS (when the LPIPS weights are there).
2. HTTP (bench/service.py's load generator and server runner): images/s and p50 latency at each concurrency
   level through `python -m service` with STYA2K_BACKEND=<backend>, one server at a time.

Graph backends read the graph cache (STYA2K_CACHE): float32 graphs are exported on first use; the -int8 ones need
`stya2k export-graph --int8 --calibration DIR` first, and are reported as skipped (with the reason) without it.

    # the measurement (a quiet machine, please): shipped weights, 512 px, 4 rounds, HTTP at 1 and 4
    python -m service export-graph --int8 --calibration ../shared/data/train
    python -m bench.backends --size 512 --rounds 4 --http-concurrency 1,4 --out bench/results/backends-cpu.json
    # a check that it runs (seconds)
    python -m bench.backends --size 64 --style-size 64 --rounds 1 --http-concurrency 1 --http-requests 2

Prints one JSON object (and writes it to --out).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# isort: off
# The service first: its OpenMP wait policy and huge-page setting must be in the environment before torch loads, so
# the in-process rounds run torch as the servers below do (not with libgomp's spinning default).
import service  # noqa: F401
# isort: on
import torch

from bench import common
from bench.service import Workload, run_level, running_server, synthetic_image
from model.quantize import compare
from service import pipeline
from service.backends import BACKENDS, missing_packages
from service.contract import Mode, TransferRequest
from service.engine import Engine
from service.metrics import ServiceMetrics
from service.settings import Settings

DEFAULT_LPIPS = common.REPO_ROOT.parent / "shared" / "weights" / "lpips"


def photo(side: int, seed: int) -> bytes:
    """A smooth, edged test image as PNG bytes (no data set needed)."""
    import io

    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, side // 32), max(2, side // 32), generator=generator)
    image = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False)
    image = (image + 0.05 * torch.rand(1, 3, side, side, generator=generator)).clamp(0, 1)
    array = (image[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def backend_device(name: str, device: str) -> str:
    """Where ``name`` runs when torch runs on ``device``: a graph backend takes a GPU only through onnxruntime's
    CUDA / TensorRT providers, so with ONNX Runtime's CPU build (or OpenVINO) a GPU box still times it on the CPU."""
    if device == "cpu" or name == "torch":
        return device
    if name.startswith("onnxruntime"):
        import onnxruntime as ort

        gpu = {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort.get_available_providers())
        return device if gpu else "cpu"
    return "cpu"


def onnxruntime_providers() -> list[str]:
    """The local execution providers this onnxruntime build has, best first ([] without onnxruntime); the Azure
    provider (remote inference, listed first by some builds) is never one a local session runs on."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return [name for name in ort.get_available_providers() if name != "AzureExecutionProvider"]


def load_engines(args: argparse.Namespace, content: bytes, style: bytes
                 ) -> tuple[dict[str, Engine], dict[str, Any], dict[str, float], dict[str, str]]:
    """Each backend's engine, loaded and warm, with its prepared job (style cached); skipped ones and why."""
    engines, jobs, load_s, skipped = {}, {}, {}, {}
    for name in args.backends:
        missing = missing_packages(name)
        if missing:
            skipped[name] = f"not installed: {', '.join(missing)}"
            continue
        settings = Settings(weights=args.weights, backend=name, device=backend_device(name, args.device),
                            threads=args.threads,
                            default_side=args.size, max_side=max(args.size, 1024), style_size=args.style_size)
        started = time.monotonic()
        engine = Engine(settings, ServiceMetrics())
        try:
            engine.load()
        except RuntimeError as exc:  # no int8 graphs, ...: the engine's own reason
            skipped[name] = str(exc)
            continue
        engine.warm_up()
        load_s[name] = round(time.monotonic() - started, 2)
        jobs[name] = cached_style_job(engine, settings, content, style, args.size)
        engines[name] = engine
    return engines, jobs, load_s, skipped


def cached_style_job(engine: Engine, settings: Settings, content: bytes, style: bytes, size: int) -> Any:
    """One stylize request prepared for ``engine.run_batch`` with its style's features already in the engine's
    cache (a first call fills it), so timing it measures the steady state of a repeated style."""
    request = TransferRequest(mode=Mode.stylize, content=content, styles=[style], max_side=size)
    engine.run_batch([pipeline.prepare(request, settings, lambda key: None)])  # fills the style cache
    return pipeline.prepare(request, settings, engine.lookup_style)


def model_rounds(args: argparse.Namespace, engines: dict[str, Engine], jobs: dict[str, Any]
                 ) -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]:
    times: dict[str, list[float]] = {name: [] for name in engines}
    outputs: dict[str, torch.Tensor] = {}
    for _ in range(args.rounds):
        for name, engine in engines.items():
            started = time.perf_counter()
            result = engine.run_batch([jobs[name]])[0]
            times[name].append(round(time.perf_counter() - started, 4))
            if not isinstance(result, torch.Tensor):
                raise result
            outputs[name] = result
    return times, outputs


def quality(outputs: dict[str, torch.Tensor], lpips_dir: Path | None) -> dict[str, dict[str, Any]]:
    """Each backend's served image (uint8, as a client gets it) against torch's: abs differences in levels,
    LPIPS."""
    metric = None
    if lpips_dir is not None and lpips_dir.is_dir():
        from model.lpips import LPIPS

        metric = LPIPS.from_folder(lpips_dir).eval()
    want = outputs["torch"][None].float() / 255  # run_batch answers uint8 (3, h, w) images
    report = {}
    for name, out in outputs.items():
        got = out[None].float() / 255
        row: dict[str, Any] = compare(want, got)
        if metric is not None:
            with torch.inference_mode():
                row["lpips"] = round(float(metric(want.clamp(0, 1), got.clamp(0, 1))[0]), 5)
        report[name] = row
    return report


def http_levels(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """images/s at each concurrency through a real server per backend (bench/service.py's runner and load)."""
    levels = common.parse_int_list(args.http_concurrency)
    server_args = argparse.Namespace(
        device=args.device, dtype="auto", threads=args.threads, size=args.size, style_size=args.style_size,
        max_batch_size=0, max_wait_ms=10.0, concurrency=levels, compile=False,
        weights=args.weights or "default", ready_timeout_s=args.ready_timeout_s)
    content = args.content.read_bytes() if args.content else synthetic_image(args.size, args.size, 1, "jpeg")
    style = args.style.read_bytes() if args.style else synthetic_image(args.style_size, args.style_size, 2, "jpeg")
    work = Workload(content, style, args.size, "jpeg")
    overrides = {"STYA2K_CACHE": os.environ["STYA2K_CACHE"]} if "STYA2K_CACHE" in os.environ else {}
    passes: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as log_dir:
        # Passes over every backend in turn: a drift of the machine shows as a difference between passes.
        for _ in range(args.http_passes):
            for name in names:
                with running_server(server_args, {**overrides, "STYA2K_BACKEND": name}, Path(log_dir)) as server:
                    rows = {}
                    for concurrency in levels:
                        requests = max(args.http_requests, 2 * concurrency)
                        row = asyncio.run(run_level(server.base_url, work, concurrency, requests,
                                                    args.http_max_seconds, warmup=1))
                        rows[str(concurrency)] = {"images_per_s": round(row["throughput_rps"] or 0.0, 4),
                                                  "p50_s": round((row["p50_ms"] or 0) / 1000, 3),
                                                  "ok": row["ok"], "requests": row["requests"]}
                    passes[name].append({"startup_s": round(server.startup_s, 2), "levels": rows})
    return {name: _median_levels(runs) for name, runs in passes.items()}


def _median_levels(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One backend's passes: each level's median images/s and p50 (the passes kept as they were)."""
    levels = {
        level: {key: round(statistics.median(run["levels"][level][key] for run in runs), 4)
                for key in ("images_per_s", "p50_s")}
        for level in runs[0]["levels"]
    }
    return {"startup_s": runs[0]["startup_s"], "levels": levels, "passes": runs}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="content side (px)")
    parser.add_argument("--style-size", type=int, default=384, help="style side (px); the service's default")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (one call per backend each)")
    parser.add_argument("--weights", default=None, help="weights file; 'random' for a check; default: shipped")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu",
                        help="cpu | cuda | cuda:N: torch's device, and a graph backend's where its runtime can run")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="comma-separated; torch is always measured (the reference)")
    parser.add_argument("--lpips", type=Path, default=DEFAULT_LPIPS, help="LPIPS weights folder (quality)")
    parser.add_argument("--http-concurrency", default="1,4", help="HTTP levels; '' skips the HTTP part")
    parser.add_argument("--http-requests", type=int, default=8, help="requests per level (at least 2 x its level)")
    parser.add_argument("--http-passes", type=int, default=1, help="passes over every backend (medians reported)")
    parser.add_argument("--http-max-seconds", type=float, default=300.0, help="most seconds per level")
    parser.add_argument("--ready-timeout-s", type=float, default=600.0)
    parser.add_argument("--content", type=Path, default=None,
                        help="content image file (a real photo: quality on it means more); default: generated")
    parser.add_argument("--style", type=Path, default=None, help="style image file; default: generated")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    names = common.parse_choice_list(args.backends, BACKENDS, "backend")
    args.backends = ["torch", *[name for name in names if name != "torch"]]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    content = args.content.read_bytes() if args.content else photo(args.size, 1)
    style = args.style.read_bytes() if args.style else photo(args.style_size, 2)
    engines, jobs, load_s, skipped = load_engines(args, content, style)
    times, outputs = model_rounds(args, engines, jobs)
    medians = {name: statistics.median(values) for name, values in times.items()}
    report: dict[str, Any] = {
        "content": str(args.content or "generated"), "style": str(args.style or "generated"),
        "size": args.size, "style_size": args.style_size, "rounds": args.rounds, "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "machine": common.machine_info(torch.device(args.device)), "git": common.git_revision(), "device": args.device,
        "devices": {name: backend_device(name, args.device) for name in engines},
        "onnxruntime_providers": onnxruntime_providers(),
        "s_per_image": medians, "rounds_s": times, "load_s": load_s, "skipped": skipped,
        "speedup_vs_torch": {name: round(medians["torch"] / value, 3) for name, value in medians.items()},
        "torch_dtype": engines["torch"].dtype_name,
        "runtime": {name: {k: engine.runtime_info().get(k) for k in ("backend", "dtype", "provider", "graphs")}
                    for name, engine in engines.items()},
        "quality_vs_torch": quality(outputs, args.lpips),
    }
    measured = list(engines)
    del engines, jobs, outputs
    gc.collect()  # the servers below get the memory back
    if args.http_concurrency:
        report["http"] = http_levels(args, measured)
    text = json.dumps(report, indent=2) + "\n"
    if args.out:
        common.write_json(args.out, report)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
