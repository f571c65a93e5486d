"""Smoke runs of the benchmark scripts with tiny settings: they finish, and their JSON and docs are right.

Nothing here checks a speed: the scripts record numbers, they do not judge them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_script(module: str, tmp_path: Path, name: str, timeout_s: float) -> tuple[dict[str, Any], str]:
    out, doc = tmp_path / f"{name}.json", tmp_path / "BENCHMARKS.md"
    proc = subprocess.run([sys.executable, "-m", module, "--preset", "smoke", "--device", "cpu", "--out", str(out),
                           "--doc", str(doc)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), doc.read_text()


@pytest.mark.slow
def test_model_benchmark_smoke(tmp_path: Path) -> None:
    data, doc = run_script("bench.model", tmp_path, "model-smoke", timeout_s=300)
    assert data["meta"]["torch"] and data["meta"]["cpu"] and data["meta"]["cores"] >= 1
    assert data["isolated"] is True  # CPU: one fresh process per config
    rows = data["results"]
    assert {r["experiment"] for r in rows} == {"throughput", "cache", "arch"}
    assert {r["arch"] for r in rows if r["experiment"] == "arch"} == {"a2k", "all_to_all", "all_to_all_materialised"}
    for row in rows:
        assert row["status"] == "ok", row
        assert row["images_per_s"] > 0 and row["median_s"] > 0
        assert row["peak_mem_bytes"] >= 0 and row["mem_method"].startswith("VmHWM")
        assert row["flops_per_image"] > 0 and row["x_floor"] > 0
        assert row["x_floor"] == pytest.approx(row["s_per_image"] / row["floor_s_per_image"])
    cache = {r["cached"]: r for r in rows if r["experiment"] == "cache"}
    assert cache[False]["flops_per_image"] > cache[True]["flops_per_image"]  # encoding the style costs FLOPs
    headline = data["flops"]["headline"]
    assert headline["size"] == 512 and 100e9 < headline["flops"] < 2000e9
    assert data["matmul"]["fp32"]["flops_per_s"] > 0
    assert "<!-- BEGIN bench/model.py -->" in doc and "NOT MEASURED" in doc and "model-smoke.json" in doc


@pytest.mark.slow
def test_model_benchmark_style_sizes(tmp_path: Path) -> None:
    """--style-sizes repeats the cache configs per style side (issue 33: s/image and memory per style size)."""
    out, doc = tmp_path / "model-style.json", tmp_path / "BENCHMARKS.md"
    proc = subprocess.run([sys.executable, "-m", "bench.model", "--preset", "smoke", "--device", "cpu",
                           "--experiments", "cache", "--cache-sizes", "48", "--style-sizes", "32,64", "--out", str(out),
                           "--doc", str(doc)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["style_sizes"] == [32, 64]
    rows = {(r["style_size"], r["cached"]): r for r in data["results"]}
    assert set(rows) == {(32, True), (32, False), (64, True), (64, False)}
    for row in rows.values():
        assert row["status"] == "ok", row
        assert row["size"] == 48 and row["median_s"] > 0 and row["peak_mem_bytes"] >= 0
    # A larger style costs more: more keys to attend over, and more pixels to encode when not cached.
    assert rows[64, True]["flops_per_image"] > rows[32, True]["flops_per_image"]
    assert rows[64, False]["flops_per_image"] > rows[32, False]["flops_per_image"]
    text = doc.read_text()
    assert "Style side: 32, 64 px" in text
    assert "48px (style 32 px): uncached / cached" in text and "48px (style 64 px): uncached / cached" in text


@pytest.mark.slow
def test_service_benchmark_smoke(tmp_path: Path) -> None:
    data, doc = run_script("bench.service", tmp_path, "service-smoke", timeout_s=400)
    servers = {s["label"]: s for s in data["servers"]}
    assert set(servers) == {"batched", "unbatched", "cache_off"}
    for server in servers.values():
        for level in server["levels"]:
            assert level["ok"] == level["requests"] >= 2, level
            assert level["throughput_rps"] > 0 and level["p50_ms"] <= level["p99_ms"]
            assert level["server"]["mean_batch_size"] >= 1
            assert level["server"]["compute_ms_per_batch"] > 0
    assert all(lvl["server"]["mean_batch_size"] == 1 for lvl in servers["unbatched"]["levels"])
    # The same style every time: cached once with the cache on, encoded for every batch with it off.
    assert all(lvl["server"]["cache_misses"] == 0 for lvl in servers["batched"]["levels"])
    assert all(lvl["server"]["cache_misses"] > 0 for lvl in servers["cache_off"]["levels"])
    ratios = data["ratios"]
    assert set(ratios["batching_gain"]) == {"1", "2"} and ratios["e2e_overhead"]["e2e_over_model"] > 0
    assert ratios["cache_gain"]["1"]["p50_latency_off_over_on"] > 0
    assert data["model_only"]["model_s"] > 0
    assert "<!-- BEGIN bench/service.py -->" in doc and "NOT MEASURED" in doc


@pytest.mark.slow
def test_service_benchmark_paired_before_after(tmp_path: Path) -> None:
    """Paired mode: two trees (here the same one twice) with their own defaults, alternated in one run."""
    out, doc = tmp_path / "service-paired.json", tmp_path / "BENCHMARKS.md"
    proc = subprocess.run([sys.executable, "-m", "bench.service", "--preset", "smoke", "--device", "cpu",
                           "--baseline-tree", str(REPO_ROOT), "--baseline-git", "HEAD", "--pairs", "1",
                           "--first-requests", "1", "--out", str(out), "--doc", str(doc)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=400)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["mode"] == "paired" and [s["label"] for s in data["servers"]] == ["before", "after"]
    for server in data["servers"]:
        assert server["startup_s"] > 0 and len(server["first_requests_s"]) == 1
        assert all(level["ok"] == level["requests"] >= 2 for level in server["levels"])
        assert server["info"]["runtime"]["max_batch_size_setting"] == "auto"  # each tree's own defaults
    assert set(data["paired"]["speedup"]) == {"1", "2"} and all(v > 0 for v in data["paired"]["speedup"].values())
    assert "before / after, paired" in doc.read_text()


@pytest.mark.slow
def test_levers_benchmark_smoke(tmp_path: Path) -> None:
    out, doc = tmp_path / "levers-smoke.json", tmp_path / "BENCHMARKS.md"
    proc = subprocess.run([sys.executable, "-m", "bench.levers", "--preset", "smoke", "--size", "32",
                           "--levers", "channels_last,omp_passive", "--out", str(out), "--doc", str(doc)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=400)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = {row["lever"]: row for row in data["levers"]}
    assert set(rows) == {"channels_last", "omp_passive"}
    assert rows["omp_passive"]["pairs"][0]["lever"]["omp_wait_policy"] == "PASSIVE"
    assert rows["omp_passive"]["pairs"][0]["fp32"]["omp_wait_policy"] is None  # the reference really differs
    for row in rows.values():
        assert row["speedup"] > 0 and row["difference"]["max_abs"] == 0  # exact levers: same pixels as fp32
    assert "<!-- BEGIN bench/levers.py -->" in doc.read_text()


def test_backends_bench_runs_torch_as_the_service_does() -> None:
    """The in-process rounds of bench/backends.py see the service's OpenMP wait policy, as its servers do: torch was
    once timed there with libgomp's spinning default against servers with sleeping threads."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    proc = subprocess.run([sys.executable, "-m", "bench.backends", "--backends", "torch", "--weights", "random",
                           "--size", "64", "--style-size", "64", "--rounds", "1", "--http-concurrency", ""],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["omp_wait_policy"] == "PASSIVE"
    assert report["style_size"] == 64 and report["s_per_image"]["torch"] > 0


def test_wait_policy_bench_measures_each_policy_in_its_own_process(tmp_path: Path) -> None:
    """Every measuring process runs under the policy it stands for: 'unset' really is libgomp's default (importing
    the service must not have set PASSIVE there), and 'pair' runs two of them."""
    out = tmp_path / "wait.json"
    proc = subprocess.run([sys.executable, "-m", "bench.wait_policy", "--weights", "random", "--size", "64",
                           "--style-size", "64", "--calls", "1", "--rounds", "1", "--scenarios", "quiet,pair",
                           "--out", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["median_s"]) == {"quiet", "pair"}
    for scenario, by_policy in report["runs"].items():
        for policy, reports in by_policy.items():
            assert [r["policy"] for r in reports] == [policy] * (2 if scenario == "pair" else 1)
            assert all(r["median_s"] > 0 for r in reports)
