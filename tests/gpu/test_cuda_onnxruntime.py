"""The onnxruntime backend (STYA2K_BACKEND=onnxruntime) on the lease's device: which execution providers the box's
onnxruntime has, that the backend on CUDA runs on its best GPU provider or refuses with a reason that says what to
install, and that a GPU provider's images match strict fp32 torch on the same device.

The box's own onnxruntime is most likely the CPU build, and onnxruntime-gpu (~300 MB) cannot travel with a lease
(64 MiB): then the comparison skips, saying so, and the refusal is what is checked. The lease runs this module in
its backend-tests step (bench/gpu/inference_lease.sh), beside the CPU backend suites; the CPU rehearsal runs it on
the CPU provider. Figures go to the session report (``gpu_report``); no timing is asserted: the backends' speed is
bench/backends.py's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
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

from bench.gpu.lease_check import CUDA_UNAVAILABLE, GPU_PROVIDERS  # the backend's order of preference
from service.engine import Engine
from service.metrics import ServiceMetrics
from service.settings import Settings

pytestmark = pytest.mark.gpu
ort = pytest.importorskip("onnxruntime", reason="the box's python has no onnxruntime (pip install .[onnx])")

UNAVAILABLE = CUDA_UNAVAILABLE  # the lease's step note says the same words


@pytest.fixture(scope="module")
def providers(gpu_report: dict[str, Any]) -> list[str]:
    """The execution providers this onnxruntime build has (recorded: the lease's only word on the box's build)."""
    import onnx

    available = ort.get_available_providers()
    gpu_report["onnxruntime/providers"] = {"onnxruntime": ort.__version__, "onnx": onnx.__version__,
                                           "available": available, "gpu": gpu_providers(available)}
    return available


def gpu_providers(available: list[str]) -> list[str]:
    return [name for name in GPU_PROVIDERS if name in available]


@pytest.fixture(scope="module")
def onnx_settings(graph_cache: Path, seeded_weights: Path, side: int, style_size: int) -> Iterator[dict[str, Any]]:
    """Settings of both engines: the session's seeded weights, whose graphs the session exported once."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STYA2K_CACHE", str(graph_cache))
        yield {"weights": str(seeded_weights), "style_size": style_size, "default_side": side, "max_side": 2048}


def loaded(settings: Settings) -> Engine:
    engine = Engine(settings, ServiceMetrics())
    engine.load()
    return engine


def test_onnxruntime_runs_on_its_best_provider_or_refuses_with_the_reason(
    device: torch.device, providers: list[str], onnx_settings: dict[str, Any], gpu_report: dict[str, Any]
) -> None:
    record = gpu_report["onnxruntime/providers"]
    engine = Engine(Settings(device=str(device), backend="onnxruntime", **onnx_settings), ServiceMetrics())
    gpu = gpu_providers(providers)
    if device.type == "cuda" and not gpu:
        # The CPU build on a GPU: no silent CPU fallback (the service would look like a GPU one and run at CPU
        # speed); the error names what to install and the alternative.
        with pytest.raises(RuntimeError, match=r"no CUDA or TensorRT provider.*onnxruntime-gpu.*STYA2K_BACKEND=torch"):
            engine.load()
        record["on_device"] = f"refused: {UNAVAILABLE}"
        return
    engine.load()
    info = engine.runtime_info()
    record["on_device"] = info["providers"]
    want = gpu[0] if device.type == "cuda" else "CPUExecutionProvider"
    assert info["backend"] == "onnxruntime" and info["provider"] == want, info
    assert info["providers"][-1] == "CPUExecutionProvider"  # what no GPU provider takes still runs
    assert info["graphs_exported_s"] is None  # the session's graphs were found, not exported again


def test_onnxruntime_on_the_device_matches_strict_fp32_torch(
    device: torch.device, providers: list[str], onnx_settings: dict[str, Any], side: int, gpu_report: dict[str, Any]
) -> None:
    """A padded batch of two on the onnxruntime engine against the torch engine in strict fp32 on the device."""
    if device.type == "cuda" and not gpu_providers(providers):
        pytest.skip(f"{UNAVAILABLE} (onnxruntime {ort.__version__} here has {', '.join(providers)})")
    onnx_engine = loaded(Settings(device=str(device), backend="onnxruntime", **onnx_settings))
    torch_engine = loaded(Settings(device=str(device), backend="torch", dtype="float32", **onnx_settings))
    width, height = side, side * 3 // 4 - 5
    jobs = [make_job(onnx_engine, width, height, seed=2, side=side),
            make_job(onnx_engine, width - side // 6, height - side // 6, seed=3, side=side)]
    assert onnx_engine.batch_key(jobs[0]) == onnx_engine.batch_key(jobs[1])  # one bucket: a padded batch of two
    with strict_fp32():
        want = torch_engine.run_batch(jobs)
    got = onnx_engine.run_batch(jobs)
    records: dict[str, Any] = {"device": str(device), "providers": onnx_engine.runtime_info()["providers"],
                               "size": [width, height]}
    for index, (out, ref, job) in enumerate(zip(got, want, jobs, strict=True)):
        assert isinstance(out, torch.Tensor) and isinstance(ref, torch.Tensor), (out, ref)
        assert out.dtype == torch.uint8 and tuple(out.shape) == (3, job.height, job.width)
        records[f"item{index}"] = diff_stats(out, ref)
    gpu_report["onnxruntime/vs_torch_fp32"] = records
    for index in range(len(jobs)):
        stats = records[f"item{index}"]
        if device.type == "cuda":
            # ONNX Runtime's CUDA provider and TensorRT use TF32 by default: held to the TF32-vs-strict bound.
            assert stats["mean_abs"] <= PRECISION_MEAN_MAX and stats["p99_abs"] <= PRECISION_P99_MAX, stats
        else:
            assert stats["p99_abs"] <= SAME_P99_MAX and stats["max_abs"] <= SAME_MAX_MAX, stats
