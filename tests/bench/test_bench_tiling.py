"""Smoke run of bench/tiling.py: a complete size with the untiled comparison and a partial one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiling_benchmark_smoke(tmp_path: Path) -> None:
    out, doc = tmp_path / "tiling.json", tmp_path / "BENCHMARKS.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.tiling", "--sizes", "192", "--tile", "64", "--margin", "64", "--max-steps", "4",
         "--accuracy-size", "128", "--threads", "1", "--out", str(out), "--doc", str(doc)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    complete, partial = json.loads(out.read_text())["rows"]
    assert complete["complete"] and complete["steps_run"] == complete["steps_total"] == 2 * complete["tiles"]
    assert complete["diff_mean_255"] <= 1.0 and complete["diff_p99_255"] <= 8.0
    assert not partial["complete"] and partial["steps_run"] == 4 and partial["seconds_extrapolated"] > 0
    assert partial["peak_bytes"] >= partial["peak_bytes_first_render"] > 0
    text = doc.read_text()
    assert "<!-- BEGIN bench/tiling.py -->" in text and "(extrapolated)" in text
