"""Fast checks of the benchmark helpers (no timing assertions: benchmarks never fail on speed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import common
from bench import model as bench_model
from bench import service as bench_service
from model import functional

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_doc_section_rewrites_only_its_own_block(tmp_path: Path) -> None:
    doc = tmp_path / "BENCHMARKS.md"
    common.update_doc_section(doc, "a", "first A")
    common.update_doc_section(doc, "b", "first B")
    common.update_doc_section(doc, "a", "second A")
    text = doc.read_text()
    assert "second A" in text and "first A" not in text and "first B" in text
    assert text.index("BEGIN a") < text.index("BEGIN b")  # replaced in place, not appended again
    assert text.count("<!-- BEGIN a -->") == 1 and text.startswith("# Benchmarks")


def test_missing_gpu_ends_a_benchmark_with_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert common.select_device("auto") == torch.device("cpu")
    with pytest.raises(SystemExit, match="--device cuda but CUDA is not available"):
        common.select_device("cuda")


def test_percentile_interpolates() -> None:
    values = [float(v) for v in range(1, 101)]
    assert common.percentile(values, 50) == pytest.approx(50.5)
    assert common.percentile(values, 99) == pytest.approx(99.01)
    assert common.percentile([3.0], 90) == 3.0


def test_time_calls_counts_a_slow_warmup_once() -> None:
    calls = []
    timing = common.time_calls(lambda: calls.append(1), torch.device("cpu"), warmup=2, min_iters=2, max_iters=5,
                               budget_s=10.0)
    assert len(calls) == 2 + len(timing.samples_s) and 2 <= len(timing.samples_s) <= 5
    assert not timing.warmup_counted
    slow = common.time_calls(lambda: calls.append(1), torch.device("cpu"), warmup=1, min_iters=3, max_iters=5,
                             budget_s=-1.0)  # every call is "over budget": the warm-up becomes the only sample
    assert slow.warmup_counted and len(slow.samples_s) == 1


def test_cpu_peak_memory_sees_a_large_allocation() -> None:
    """In a fresh process, as PeakMemory's callers use it: in the test process the block can come from pages an
    earlier test's heap kept (the service's heap settings keep freed memory), and then no peak moves (CI saw 0)."""
    code = (
        "import torch\nfrom bench import common\n"
        "probe = common.PeakMemory(torch.device('cpu'))\nprobe.start()\n"
        "block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched\n"
        "print(*probe.peak_bytes())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    delta, absolute = map(int, done.stdout.split())
    assert delta >= 48 * 2**20 and absolute >= delta


def test_cpu_peak_memory_never_goes_down_between_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    # VmHWM can read lower later (the kernel folds RSS into it lazily): CI once saw the final peak 90 kB below
    # an earlier read of the same region.
    probe = common.PeakMemory(torch.device("cpu"))
    probe.start()
    if not probe.method.startswith("VmHWM"):
        pytest.skip(f"/proc/self/clear_refs is not writable here ({probe.method})")
    readings = iter([probe.baseline_bytes // 1024 + 5000, probe.baseline_bytes // 1024 + 4000])
    monkeypatch.setattr(common, "_proc_status_kib", lambda field_name: next(readings))
    first, _ = probe.peak_bytes()
    second, _ = probe.peak_bytes()
    assert first == second == 5000 * 1024


def test_materialised_all_to_all_matches_the_model() -> None:
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 16, 5, 6, generator=generator)
    k = torch.randn(2, 16, 4, 3, generator=generator)
    v = torch.randn(2, 24, 4, 3, generator=generator)
    expected = functional.all_to_all(q, k, v, heads=8)
    assert torch.allclose(bench_model.materialised_all_to_all(q, k, v, heads=8), expected, atol=1e-5)
    with bench_model.attention_impl("all_to_all_materialised"):
        assert functional.all_to_all is bench_model.materialised_all_to_all
    assert functional.all_to_all is not bench_model.materialised_all_to_all


def test_attention_matrix_bytes() -> None:
    # relu3_1 of 512 px content and style: 128x128 = 16384 tokens each side, 8 heads, fp32
    assert bench_model.attention_matrix_bytes(512, 512, 1, "fp32") == 8 * 16384 * 16384 * 4
    assert bench_model.attention_matrix_bytes(512, 512, 2, "bf16") == 2 * 8 * 16384 * 16384 * 2


def test_flop_count_is_dominated_by_convolutions() -> None:
    flops = bench_model.count_flops("a2k", 128, 128, cached=True)
    assert flops["flops"] > 0 and flops["by_op"]["aten.convolution"] / flops["flops"] > 0.9
    bigger = bench_model.count_flops("a2k", 256, 128, cached=True)
    assert 3.5 < bigger["flops"] / flops["flops"] < 4.5  # convolutions scale with the pixel count


METRICS_BEFORE = """# HELP x
stya2k_queue_wait_seconds_sum 1.0
stya2k_queue_wait_seconds_count 2.0
stya2k_compute_seconds_sum 3.0
stya2k_compute_seconds_count 1.0
stya2k_batch_size_sum 2.0
stya2k_batch_size_count 1.0
stya2k_request_duration_seconds_sum{endpoint="/v1/stylize"} 4.0
stya2k_request_duration_seconds_count{endpoint="/v1/stylize"} 2.0
stya2k_style_cache_hits_total 1.0
"""
METRICS_AFTER = """stya2k_queue_wait_seconds_sum 1.4
stya2k_queue_wait_seconds_count 6.0
stya2k_compute_seconds_sum 4.0
stya2k_compute_seconds_count 3.0
stya2k_batch_size_sum 6.0
stya2k_batch_size_count 3.0
stya2k_request_duration_seconds_sum{endpoint="/v1/stylize"} 6.0
stya2k_request_duration_seconds_count{endpoint="/v1/stylize"} 6.0
stya2k_style_cache_hits_total 5.0
"""


def test_server_view_uses_metric_deltas() -> None:
    view = bench_service.server_view(bench_service.parse_metrics(METRICS_BEFORE),
                                     bench_service.parse_metrics(METRICS_AFTER))
    assert view["queue_wait_ms"] == pytest.approx(100.0)  # 0.4 s over 4 requests
    assert view["compute_ms_per_batch"] == pytest.approx(500.0)
    assert view["mean_batch_size"] == pytest.approx(2.0)
    assert view["request_ms"] == pytest.approx(500.0)
    assert view["cache_hits"] == 4 and view["cache_misses"] == 0
    assert view["decode_ms"] is None  # absent metric: unknown, not zero


def test_codec_line_times_the_shipped_encode_and_keeps_the_old_experiment_as_history() -> None:
    now = {"decode_style_cached_ms": 0.6, "decode_style_uncached_ms": 9.8, "encode_current_png_ms": 9.3,
           "encode_current_jpeg_ms": 0.3}
    line = bench_service.codec_line(now, "abc1234")
    assert line.endswith("png 9.3 ms, jpeg 0.3 ms.") and "fast" not in line and "git abc1234" in line
    before = {**now, "encode_fast_png_ms": 5.3, "encode_fast_jpeg_ms": 0.3, "encode_speedup_png": 77.1,
              "encode_speedup_jpeg": 1262.0, "fast_identical_pixels": True}
    history = bench_service.codec_line(before, "78a451d")
    assert "then proposed" in history and "png 5.3 ms" in history and "(ratio 77.1x / 1262.0x)" in history
    assert not hasattr(bench_service, "fast_from_uint8")
