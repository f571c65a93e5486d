"""The engine's per-machine choices: batch limit (auto per device), precision (auto, exact float32 one setting
away), warm-up shapes and the start-up timings, as /v1/info reports them."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import torch
from service_helpers import RunningServer, image_bytes

from model import hardware
from service import engine as engine_module
from service.client import Client
from service.engine import AUTO_BATCH, Engine
from service.metrics import ServiceMetrics
from service.settings import Settings

TINY = {"weights": "random", "device": "cpu", "threads": 1, "default_side": 64, "max_side": 64, "style_size": 64}


def loaded(**overrides: object) -> Engine:
    engine = Engine(Settings(**{**TINY, **overrides}), ServiceMetrics())
    engine.load()
    return engine


def test_auto_batch_is_one_on_cpu_and_an_explicit_limit_wins() -> None:
    assert Settings().max_batch_size == 0  # auto is the default
    assert loaded().max_batch_size == AUTO_BATCH["cpu"] == 1
    assert loaded(max_batch_size=3).max_batch_size == 3


def test_cpu_without_native_bf16_stays_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    monkeypatch.setattr(Engine, "_probe_cpu_bf16", lambda self: pytest.fail("no probe without native bf16"))
    engine = loaded()
    assert engine.autocast_dtype is None and engine.dtype_name == "float32"
    assert "no native bfloat16" in engine.precision_reason


@pytest.mark.parametrize(("speedup", "expected"), [(2.0, torch.bfloat16), (1.05, None)])
def test_native_bf16_is_chosen_only_when_measured_faster(
    monkeypatch: pytest.MonkeyPatch, speedup: float, expected: torch.dtype | None
) -> None:
    monkeypatch.setattr(engine_module, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    monkeypatch.setattr(Engine, "_probe_cpu_bf16", lambda self: speedup)
    engine = loaded()
    assert engine.autocast_dtype is expected
    assert f"{speedup:.2f}x" in engine.precision_reason


def test_float32_setting_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    monkeypatch.setattr(Engine, "_probe_cpu_bf16", lambda self: 9.0)
    assert loaded().autocast_dtype is torch.bfloat16  # auto would take bf16 on such a machine ...
    engine = loaded(dtype="float32")  # ... one setting gives plain float32 arithmetic
    assert engine.autocast_dtype is None and "exact" in engine.precision_reason
    content = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    style = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode(), engine._inference():
        served = engine.backend.run(content, [engine.net.encode_style(style)], None, 1.0)
    with torch.inference_mode():
        reference = engine.net.stylize_from_features(content, [engine.net.encode_style(style)], None, 1.0)
    assert served.dtype == torch.float32 and torch.equal(served, reference)


def test_probe_measures_a_real_ratio() -> None:
    engine = loaded()
    ratio = engine._probe_cpu_bf16(side=32)  # small: emulated bf16 (AVX2) is 10x+ slower
    assert ratio > 0 and engine.startup["precision_probe_s"] > 0


def test_cpu_warms_one_small_shape_and_times_start_up() -> None:
    engine = loaded(default_side=512, max_side=1024, style_size=64)
    assert engine.warm_shapes() == [(64, 64)]  # one bucket
    engine.warm_up()
    assert engine.startup["load_s"] > 0 and engine.startup["warmup_s"] > 0


def test_info_reports_the_runtime_choices(server_factory: Callable[..., RunningServer]) -> None:
    running = server_factory(max_batch_size=0)
    info = httpx.get(running.url + "/v1/info", timeout=10).json()
    runtime = info["runtime"]
    assert runtime["max_batch_size"] == 1 and runtime["max_batch_size_setting"] == "auto"
    assert info["batching"]["max_batch_size"] == 1
    assert runtime["dtype"] == info["dtype"] and runtime["dtype_reason"].startswith(info["dtype"])
    assert runtime["dtype_setting"] == "auto" and runtime["cpu_capability"]
    # In-process: whatever pytest's own allocator got, which the same probe reports again here.
    assert runtime["huge_pages"] == hardware.huge_pages().reason
    assert runtime["heap"] == hardware.keep_freed_memory()  # same process, same answer (the setting is idempotent)
    assert runtime["startup_s"]["load_s"] > 0
    assert runtime["startup_s"]["ready_since_process_start_s"] > 0


def test_openmp_threads_sleep_when_idle() -> None:
    """Importing the service before torch makes idle OpenMP threads passive (a user's own choice wins)."""
    code = "import os, service, torch; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.stdout.strip() == "PASSIVE", done.stderr
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.stdout.strip() == "ACTIVE", done.stderr


def test_service_imports_without_warnings() -> None:
    """No "Failed to initialize NumPy" (or any other warning) when the service and torch load: numpy is a
    declared dependency, so a plain install has it."""
    repo = Path(__file__).resolve().parents[2]
    dependencies = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("numpy==") for d in dependencies)
    code = "import service.app, service.engine, torch, model"
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=repo, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0 and "Warning" not in done.stderr, done.stderr[-2000:]


def test_output_size_header_says_it_was_not_upscaled(server_factory: Callable[..., RunningServer]) -> None:
    running = server_factory(max_side=1024, default_side=512)
    with Client(running.url, timeout_s=60) as client:
        result = client.stylize(image_bytes((80, 60)), image_bytes((64, 64)), max_side=768)
    assert result.size == (80, 60)  # a smaller content keeps its size
    response = httpx.post(running.url + "/v1/stylize", files={"content": ("c.png", image_bytes((80, 60))),
                          "style": ("s.png", image_bytes((64, 64)))}, data={"max_side": "768"}, timeout=60)  # fmt: skip
    assert response.status_code == 200 and response.headers["x-output-size"] == "80x60"
    json_response = httpx.post(running.url + "/v1/stylize/json", timeout=60, json={
        "content": base64.b64encode(image_bytes((80, 60))).decode(),
        "style": base64.b64encode(image_bytes((64, 64))).decode(), "max_side": 768})  # fmt: skip
    assert json_response.headers["x-output-size"] == "80x60" and json_response.json()["width"] == 80


def test_an_eager_warm_up_failure_is_raised_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = loaded()
    calls = []

    def broken(*args: object, **kwargs: object) -> None:
        calls.append(1)
        raise RuntimeError("kernel failed")

    monkeypatch.setattr(engine, "_warm", broken)
    with pytest.raises(RuntimeError, match="kernel failed"):
        engine.warm_up()
    assert len(calls) == 1  # eager already: no "torch.compile failed" fallback and second try


@pytest.mark.parametrize("preserve_color", [False, True])
def test_tiled_job_matches_the_batched_one(preserve_color: bool) -> None:
    from service.contract import Mode, TransferRequest
    from service.pipeline import prepare

    engine = loaded(max_side=256, default_side=256, tile_px=128, tile_margin_px=128)
    request = TransferRequest(
        mode=Mode.stylize,
        content=image_bytes((256, 192), "PNG"),
        styles=[image_bytes((64, 64), "PNG")],
        preserve_color=preserve_color,
        alpha=0.7,
    )
    job = prepare(request, engine.settings, engine.lookup_style)
    assert engine.needs_tiling(job)
    whole = engine.run_batch([job])[0]
    tiled = engine.tiled(job)
    assert tiled.total == 2 * 2 * 2  # 2 x 2 tiles, two passes
    for step in tiled.steps():
        step()
    pieces = engine.finish_tiled(job, tiled)
    assert isinstance(whole, torch.Tensor) and pieces.shape == whole.shape == (3, 192, 256)
    diff = (pieces.float() - whole.float()).abs().flatten()
    assert diff.mean() <= 1.0 and diff.quantile(0.99) <= 8.0
