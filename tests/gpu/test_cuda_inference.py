"""The service's CUDA paths, on a real GPU: reduced precision, pinned / channels_last transfers, a real
out-of-memory split through the batcher, and torch.compile.

Every figure is recorded in the session report (``gpu_report``, written to $GPU_LEASE_REPORT by the lease
command). No timing is asserted anywhere: speed lives in bench/. Without CUDA these tests skip; the CPU
rehearsal (GPU_LEASE_REHEARSE=1) runs them at 64 px with the CUDA-only checks skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from gpu_helpers import (
    PRECISION_MEAN_MAX,
    PRECISION_P99_MAX,
    SAME_MAX_MAX,
    SAME_P99_MAX,
    diff_stats,
    make_job,
    strict_fp32,
)

from service.batcher import Batcher, BatchResult, ModelThread
from service.contract import TransferJob
from service.engine import Engine
from service.errors import InsufficientMemory
from service.metrics import ServiceMetrics
from service.settings import Settings

pytestmark = pytest.mark.gpu

PRECISION_LPIPS_MAX = 0.08  # beside gpu_helpers' pixel bounds: a visibly different image fails


# ------------------------------------------------------------------------------------------------ helpers
def make_engine(device: torch.device, style_size: int, **changes: Any) -> Engine:
    settings = Settings(device=str(device), style_size=style_size, **{"max_side": 2048, **changes})
    engine = Engine(settings, ServiceMetrics())
    engine.load()
    return engine


def lpips_of(metric: Any | None, a: torch.Tensor, b: torch.Tensor, device: torch.device) -> float | None:
    if metric is None:
        return None
    with torch.inference_mode():
        pair = [x[None].to(device).float() / 255 for x in (a, b)]  # each (1, 3, h, w)
        return float(metric(*pair)[0])


def check_output(out: torch.Tensor | BaseException, job: TransferJob, device: torch.device) -> torch.Tensor:
    assert isinstance(out, torch.Tensor), out
    assert out.dtype == torch.uint8 and out.device.type == "cpu"
    assert tuple(out.shape) == (3, job.height, job.width)
    if device.type == "cuda":
        assert out.is_pinned()  # handed back through the engine's pinned host buffer
    return out


@pytest.fixture(scope="module")
def shape(side: int) -> tuple[int, int]:
    """(width, height) of the main content: 4:3 minus a few pixels, so the padding / crop path runs."""
    return side, side * 3 // 4 - 5


@pytest.fixture(scope="module")
def reference(device: torch.device, side: int, style_size: int,
              shape: tuple[int, int]) -> tuple[Engine, TransferJob, torch.Tensor]:
    """Strict fp32 engine, the main job and its output: what reduced precision is measured against."""
    engine = make_engine(device, style_size, dtype="float32", default_side=side)
    job = make_job(engine, *shape, seed=1, side=side)
    with strict_fp32():
        out = check_output(engine.run_batch([job])[0], job, device)
    return engine, job, out


# ------------------------------------------------------------------------------------------------ precision
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_reduced_precision_matches_fp32(dtype: str, device: torch.device, side: int, style_size: int, reference: Any,
                                        lpips_metric: Any, gpu_report: dict[str, Any]) -> None:
    _, job, ref = reference
    engine = make_engine(device, style_size, dtype=dtype, default_side=side)
    assert engine.dtype_name == dtype
    out = check_output(engine.run_batch([job])[0], job, device)
    stats = diff_stats(out, ref)
    stats["lpips"] = lpips_of(lpips_metric, out, ref, device)
    gpu_report[f"precision/{dtype}_vs_fp32"] = {"device": str(device), "size": [job.width, job.height], **stats}
    assert stats["mean_abs"] <= PRECISION_MEAN_MAX, stats
    assert stats["p99_abs"] <= PRECISION_P99_MAX, stats
    if stats["lpips"] is not None:
        assert stats["lpips"] <= PRECISION_LPIPS_MAX, stats


def test_default_fp32_tf32_matches_strict_fp32(device: torch.device, reference: Any, lpips_metric: Any,
                                               gpu_report: dict[str, Any]) -> None:
    """STYA2K_DTYPE=float32 on CUDA runs cuDNN's TF32 convolutions: how far is that from strict fp32?"""
    engine, job, ref = reference
    out = check_output(engine.run_batch([job])[0], job, device)
    stats = diff_stats(out, ref)
    stats["lpips"] = lpips_of(lpips_metric, out, ref, device)
    gpu_report["precision/float32_tf32_vs_fp32"] = {"device": str(device), "tf32": torch.backends.cudnn.allow_tf32,
                                                    **stats}
    assert stats["mean_abs"] <= PRECISION_MEAN_MAX, stats
    assert stats["p99_abs"] <= PRECISION_P99_MAX, stats


# ------------------------------------------------------------------------------------------------ transfers
def test_cuda_batch_matches_cpu_and_single_runs(device: torch.device, side: int, style_size: int, reference: Any,
                                                gpu_report: dict[str, Any]) -> None:
    """Pinned host<->device copies, channels_last and the pad/crop of a mixed batch give the CPU's pixels."""
    engine = reference[0]
    if device.type == "cuda":
        conv = next(m for m in engine.net.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    small = min(side, 256)  # the CPU reference must stay cheap
    width, height = small, small * 3 // 4 - 5
    jobs = [make_job(engine, width, height, seed=2, side=small),
            make_job(engine, width - small // 6, height - small // 6, seed=3, side=small)]
    assert engine.batch_key(jobs[0]) == engine.batch_key(jobs[1])  # one bucket: a real padded batch of two
    cpu = make_engine(torch.device("cpu"), style_size, dtype="float32", default_side=small)
    with strict_fp32():
        batched = [check_output(o, j, device) for o, j in zip(engine.run_batch(jobs), jobs, strict=True)]
        singles = [check_output(engine.run_batch([j])[0], j, device) for j in jobs]
    on_cpu = [check_output(o, j, torch.device("cpu")) for o, j in zip(cpu.run_batch(jobs), jobs, strict=True)]
    records = {}
    for index in range(len(jobs)):
        records[f"item{index}_batch_vs_cpu"] = diff_stats(batched[index], on_cpu[index])
        records[f"item{index}_batch_vs_single"] = diff_stats(batched[index], singles[index])
    gpu_report["transfers/cuda_vs_cpu_fp32"] = {"device": str(device), "size": [width, height], **records}
    for name, stats in records.items():
        assert stats["p99_abs"] <= SAME_P99_MAX and stats["max_abs"] <= SAME_MAX_MAX, (name, stats)


# ------------------------------------------------------------------------------------------------ OOM split
def peak_bytes(engine: Engine, jobs: list[TransferJob]) -> int:
    """Peak device memory one batch takes over what is allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    engine.run_batch(jobs)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


@contextlib.contextmanager
def memory_cap(device: torch.device, budget_bytes: float) -> Iterator[float]:
    """Cap the caching allocator at what it holds now + ``budget_bytes``; yields the fraction used."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = min(1.0, (torch.cuda.memory_reserved(device) + budget_bytes) / total)
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    try:
        yield fraction
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()


async def submit_all(engine: Engine, jobs: list[TransferJob], max_batch: int) -> list[BatchResult[Any] | BaseException]:
    """The service's batcher in front of the engine; all jobs arrive together, so they form one batch."""
    thread = ModelThread("gpu-test-model")
    batcher: Batcher[TransferJob, torch.Tensor] = Batcher(
        engine.run_batch, max_batch_size=max_batch, max_wait_ms=500, queue_size=64, metrics=engine.metrics,
        failure_mapper=engine.failure, model_thread=thread)
    batcher.start()
    try:
        deadline = time.monotonic() + 300
        return await asyncio.gather(*(batcher.submit(engine.batch_key(j), j, deadline=deadline) for j in jobs),
                                    return_exceptions=True)
    finally:
        await batcher.close(timeout_s=30)
        thread.stop()
        thread.join(30)


def test_out_of_memory_splits_the_batch_and_isolates_a_too_large_request(device: torch.device, side: int,
                                                                         style_size: int,
                                                                         gpu_report: dict[str, Any]) -> None:
    """A batch of 8 that does not fit (allocator capped) is split until it does: every request still gets
    its own image. A request too large even alone gets InsufficientMemory, and the next one is served."""
    engine = make_engine(device, style_size, dtype="auto", default_side=side, max_batch_size=8)
    width, height = side, side * 3 // 4
    jobs = [make_job(engine, width, height, seed=10 + i, side=side) for i in range(8)]
    alone = [check_output(engine.run_batch([j])[0], j, device) for j in jobs]  # uncapped references
    record: dict[str, Any] = {"device": str(device), "dtype": engine.dtype_name, "size": [width, height]}
    cap: contextlib.AbstractContextManager[Any] = contextlib.nullcontext(None)
    if device.type == "cuda":
        one, two = peak_bytes(engine, jobs[:1]), peak_bytes(engine, jobs[:2])
        per_item = max(two - one, 1)
        budget = max(one - per_item, 0) + 2.5 * per_item  # room for a batch of two, not of four
        record.update(peak_batch1_bytes=one, peak_batch2_bytes=two, budget_bytes=budget)
        cap = memory_cap(device, budget)
        ooms_before = torch.cuda.memory_stats(device).get("num_ooms", 0)
    with cap as fraction:
        results = asyncio.run(submit_all(engine, jobs, max_batch=8))
        big_job = make_job(engine, 2 * side, 2 * side, seed=99, side=2 * side) if device.type == "cuda" else None
        after = asyncio.run(submit_all(engine, [big_job, jobs[0]], max_batch=1)) if big_job is not None else []
    record.update(memory_fraction=fraction, batch_sizes=[getattr(r, "batch_size", None) for r in results])
    gpu_report["oom/split"] = record
    for result, job, expected in zip(results, jobs, alone, strict=True):
        assert isinstance(result, BatchResult), result
        stats = diff_stats(check_output(result.value, job, device), expected)
        assert stats["mean_abs"] <= 1 / 255 and stats["p99_abs"] <= 8 / 255, stats  # its own image, not another's
    if device.type == "cuda":
        record["ooms"] = torch.cuda.memory_stats(device).get("num_ooms", 0) - ooms_before
        assert record["ooms"] >= 1  # a real CUDA out-of-memory happened ...
        assert max(r.batch_size for r in results) < 8  # ... and the batch of 8 was split to fit
        too_large, next_one = after
        record["too_large"] = repr(too_large)
        assert isinstance(too_large, InsufficientMemory), too_large
        assert isinstance(next_one, BatchResult)  # the service keeps serving after it
    else:
        assert [r.batch_size for r in results] == [8] * 8  # rehearsal: no cap, one batch


# ------------------------------------------------------------------------------------------------ compile
def test_torch_compile_on_cuda_matches_eager(device: torch.device, style_size: int, gpu_report: dict[str, Any],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """STYA2K_COMPILE=1: warm-up compiles (no silent eager fallback) and the compiled transfer's pixels match."""
    backend = "inductor"
    if device.type != "cuda":
        # CPU rehearsal: dynamo still captures the whole transfer, but the eager backend skips the minutes of
        # C++ code generation that inductor would need on a small CPU.
        backend = "eager"
        monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=backend))
    side = 64  # the three warm-up shapes collapse into one 64x64 bucket: a single compilation
    started = time.monotonic()
    compiled = make_engine(device, style_size, dtype="auto", default_side=side, compile=True)
    compiled.warm_up()
    compile_s = time.monotonic() - started
    # == (not `is`): every attribute access makes a new bound-method object
    assert compiled.backend.stylize != compiled.net.stylize_from_features, "warm-up fell back to eager"
    eager = make_engine(device, style_size, dtype="auto", default_side=side)
    job = make_job(eager, side, side * 3 // 4, seed=5, side=side)
    out_eager = check_output(eager.run_batch([job])[0], job, device)
    out_compiled = check_output(compiled.run_batch([job])[0], job, device)
    stats = diff_stats(out_compiled, out_eager)
    gpu_report["compile/vs_eager"] = {"backend": backend, "dtype": compiled.dtype_name, "size": [job.width, job.height],
                                      "load_and_compile_s": compile_s, **stats}
    assert stats["mean_abs"] <= 1 / 255 and stats["p99_abs"] <= 8 / 255, stats
