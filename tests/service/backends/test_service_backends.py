"""The service on each backend, through real uvicorn servers and HTTP: STYA2K_BACKEND=onnxruntime, openvino and
onnxruntime-int8 answer every endpoint kind (sync stylize / interpolate / multistyle, a tiled job) with torch's
image within the backend's tolerance, start from cached graphs without an export, and /v1/info says which runtime
runs and why."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from service_helpers import RunningServer, start_server

from model.graphs import GraphSet
from service.backends import missing_packages
from service.client import Client
from service.settings import Settings, SettingsError

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install .[onnx])")

# tile_px 64: a 128 px job is tiled (2 x 2 tiles), so the jobs API's tile steps run on the backend too. device cpu:
# this compares float32 on the CPU provider; on a GPU box `auto` would give torch fp16 on CUDA and ask onnxruntime
# for a CUDA provider (tests/gpu/test_cuda_onnxruntime.py covers the device).
# dtype float32: the reference is exact float32 arithmetic (auto picks bfloat16 on a CPU with native bf16).
SERVER = {"max_side": 128, "default_side": 96, "style_size": 64, "tile_px": 64, "tile_margin_px": 64, "device": "cpu",
          "dtype": "float32"}


# Served here: torch (the reference), and every other backend this environment can run but openvino-int8 (the
# same int8 graphs as onnxruntime-int8; the contract test covers it).
NAMES = tuple(name for name in ("torch", "onnxruntime", "openvino", "onnxruntime-int8") if not missing_packages(name))


@pytest.fixture(scope="module")
def servers(graph_cache: Path, int8_graphs: Path, seeded_weights: Path) -> Iterator[dict[str, RunningServer]]:
    """One server per backend on the same seeded weights; the graph cache is the session's (no export here)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STYA2K_CACHE", str(graph_cache))
        running = {name: start_server(weights=str(seeded_weights), backend=name, **SERVER) for name in NAMES}
    yield running
    for server in running.values():
        server.stop()


def png(image: torch.Tensor) -> bytes:
    array = (image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def same_image(images: dict[str, bytes]) -> None:
    """Each backend's image against torch's: float32 ones equal within one level of 255 (a 1e-3 tolerance may
    round a value the other way); int8 ones within 4 levels mean (their bound is 6) and their per-pixel bound."""
    want = pixels(images["torch"])
    assert np.unique(want).size > 8  # a real image, not a flat one
    for name, data in images.items():
        got = pixels(data)
        assert want.shape == got.shape, name
        diff = np.abs(want - got)
        if name.endswith("-int8"):
            assert diff.mean() <= 4 and diff.max() <= 0.25 * 255, (name, diff.mean(), diff.max())
        else:
            assert diff.max() <= 1, (name, diff.max())


@pytest.fixture(scope="module")
def inputs(photo_like: Callable[..., torch.Tensor]) -> dict[str, bytes]:
    return {"content": png(photo_like(1, 1, 72, 100)), "style": png(photo_like(2, 1, 64, 64)),
            "style2": png(photo_like(3, 1, 80, 60)), "big": png(photo_like(4, 1, 128, 120))}  # fmt: skip


def each(servers: dict[str, RunningServer], call: Callable[[Client], bytes]) -> dict[str, bytes]:
    out = {}
    for name, server in servers.items():
        with Client(server.url, timeout_s=120) as client:
            out[name] = call(client)
    return out


def test_onnxruntime_reports_its_runtime_and_started_from_the_cache(servers: dict[str, RunningServer]) -> None:
    with Client(servers["onnxruntime"].url) as client:
        info = client.info()
    runtime = info["runtime"]
    assert runtime["backend"] == "onnxruntime" and runtime["backend_setting"] == "onnxruntime"
    assert runtime["provider"] == "CPUExecutionProvider" and "STYA2K_BACKEND=onnxruntime" in runtime["backend_reason"]
    assert info["dtype"] == runtime["dtype"] == "float32" and runtime["dtype_reason"].startswith("float32")
    assert runtime["graphs_exported_s"] is None and runtime["startup_s"]["graphs_export_s"] is None  # cached
    with Client(servers["torch"].url) as client:
        assert client.info()["runtime"]["backend"] == "torch"


def test_openvino_and_int8_report_their_runtime(servers: dict[str, RunningServer], int8_graphs: Path) -> None:
    if "openvino" in servers:
        with Client(servers["openvino"].url) as client:
            runtime = client.info()["runtime"]
        assert runtime["backend"] == "openvino" and runtime["provider"] == "CPU" and runtime["dtype"] == "float32"
        assert runtime["openvino"].startswith("2026.4.1") and runtime["graphs_exported_s"] is None
    with Client(servers["onnxruntime-int8"].url) as client:
        info = client.info()
    runtime = info["runtime"]
    assert runtime["backend"] == "onnxruntime-int8" and info["dtype"] == runtime["dtype"] == "int8"
    assert runtime["graphs"] == str(int8_graphs) and runtime["graphs_precision"] == "int8"
    quality = runtime["int8_quality"]
    assert quality["calibration_sha256"][:16] == int8_graphs.name.removeprefix("int8-")
    assert quality["pairs"] > 0 and quality["mean_levels"] >= 0 and "per_pair" not in quality
    assert runtime["int8_lpips_bound"] == 0.02


def test_stylize_is_the_same_image_on_every_backend(
    servers: dict[str, RunningServer], inputs: dict[str, bytes]
) -> None:
    images = each(servers, lambda c: c.stylize(inputs["content"], inputs["style"], alpha=0.8).data)
    same_image(images)


def test_interpolate_is_the_same_image_on_every_backend(
    servers: dict[str, RunningServer], inputs: dict[str, bytes]
) -> None:
    images = each(servers, lambda c: c.interpolate(inputs["content"], [inputs["style"], inputs["style2"]],
                                                   [0.3, 0.7]).data)  # fmt: skip
    same_image(images)


def test_multistyle_is_the_same_image_on_every_backend(
    servers: dict[str, RunningServer], inputs: dict[str, bytes]
) -> None:
    labels = Image.new("L", (100, 72), 0)
    labels.paste(1, (50, 0, 100, 72))
    buffer = io.BytesIO()
    labels.save(buffer, format="PNG")
    images = each(servers, lambda c: c.multistyle(inputs["content"], [inputs["style"], inputs["style2"]],
                                                  labels=buffer.getvalue()).data)  # fmt: skip
    same_image(images)


def test_a_tiled_job_is_the_same_image_on_every_backend(
    servers: dict[str, RunningServer], inputs: dict[str, bytes]
) -> None:
    def run_job(client: Client) -> bytes:
        job = client.submit(inputs["big"], inputs["style"], max_side=128)
        job.wait(timeout=300)
        return job.result().data

    images = each(servers, run_job)
    same_image(images)


def test_the_backend_setting_is_checked() -> None:
    assert Settings.from_env({"STYA2K_BACKEND": "onnxruntime"}).backend == "onnxruntime"
    assert Settings.from_env({"STYA2K_BACKEND": "openvino-int8"}).backend == "openvino-int8"
    assert Settings().backend == "auto"
    with pytest.raises(SettingsError, match="STYA2K_BACKEND"):
        Settings.from_env({"STYA2K_BACKEND": "tensorrt"})


def test_auto_measures_graph_backends_only_when_their_graphs_are_cached(
    graph_cache: Path, int8_graphs: Path, seeded_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service import engine as engine_module
    from service.backends import GRAPH_BACKENDS
    from service.backends.graph_backend import INT8_LPIPS_BOUND, read_quality
    from service.engine import Engine
    from service.metrics import ServiceMetrics

    settings = Settings(weights=str(seeded_weights), device="cpu", dtype="float32", threads=1, backend="auto")
    monkeypatch.setenv("STYA2K_CACHE", str(tmp_path))  # empty: start-up must not pay an export
    cold = Engine(settings, ServiceMetrics())
    cold.load()
    assert cold.backend.name == "torch" and "onnxruntime: no cached graphs" in cold.backend_reason
    assert "onnxruntime-int8: no cached graphs" in cold.backend_reason and "--int8" in cold.backend_reason
    assert cold.backend_probe is None and not list(tmp_path.iterdir())
    monkeypatch.setenv("STYA2K_CACHE", str(graph_cache))
    monkeypatch.setattr(engine_module, "BACKEND_PROBE_BUDGET_S", 1e9)  # this test measures them all
    warm = Engine(settings, ServiceMetrics())
    warm.load()
    probes = warm.backend_probe
    assert probes is not None and probes["onnxruntime"]["torch_s"] > 0 and probes["onnxruntime"]["backend_s"] > 0
    assert probes["onnxruntime"]["max_abs"] <= 1e-3  # within the onnxruntime backend's declared tolerance
    # Whichever won on this machine, the reason names it and the measurement behind it.
    assert warm.backend_reason.startswith(warm.backend.name + ": auto") and "measured" in warm.backend_reason
    assert warm.runtime_info()["backend_probe"] == probes
    # int8 is measured only when its recorded LPIPS meets the bound; otherwise the reason says why not.
    lpips = (read_quality(GraphSet(int8_graphs)) or {}).get("lpips_mean")
    if lpips is None or lpips > INT8_LPIPS_BOUND:
        assert "onnxruntime-int8" not in probes and warm.backend.name != "onnxruntime-int8"
        assert "onnxruntime-int8: not measured: " in warm.backend_reason
    else:
        assert "onnxruntime-int8" in probes
    # Start-up stays short: past the probe budget the remaining candidates are reported, not measured.
    assert sorted(engine_module.AUTO_ORDER) == sorted(GRAPH_BACKENDS)
    monkeypatch.setattr(engine_module, "BACKEND_PROBE_BUDGET_S", 0.0)
    hurried = Engine(settings, ServiceMetrics())
    hurried.load()
    first, *rest = engine_module.AUTO_ORDER
    reason = hurried.backend_reason
    assert f"{first}: " in reason and f"{first}: not measured: the start-up" not in reason
    for name in rest:
        assert f"{name}: not measured: the start-up probe budget (0 s) is spent" in reason


def test_a_backend_without_its_graphs_or_packages_is_refused_with_the_reason(
    seeded_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.engine import Engine
    from service.metrics import ServiceMetrics

    monkeypatch.setenv("STYA2K_CACHE", str(tmp_path))
    engine = Engine(Settings(weights=str(seeded_weights), device="cpu", backend="onnxruntime-int8"), ServiceMetrics())
    with pytest.raises(RuntimeError, match=r"STYA2K_BACKEND=onnxruntime-int8: no int8 graphs .*export-graph --int8"):
        engine.load()
    engine = Engine(Settings(weights=str(seeded_weights), device="cpu", backend="openvino", dtype="bfloat16"),
                    ServiceMetrics())
    with pytest.raises(RuntimeError, match="STYA2K_DTYPE=bfloat16: STYA2K_DTYPE is torch's precision"):
        engine.load()
