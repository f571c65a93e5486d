"""Smoke run of bench/train.py on generated images: every variant steps, ratios and FLOPs are reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.imageio import tensor_to_pil
from training.pack import build_pack

REPO_ROOT = Path(__file__).resolve().parents[2]


def _images(folder: Path, count: int, seed: int) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    for i in range(count):
        tensor_to_pil(torch.rand(3, 48, 56, generator=gen)).save(folder / f"{i}.png")
    return str(folder)


@pytest.mark.slow
def test_train_benchmark_smoke(tmp_path: Path) -> None:
    content, style = _images(tmp_path / "c", 4, 1), _images(tmp_path / "s", 3, 2)
    pack = build_pack(tmp_path / "pack", (content,), (style,), load_size=40)
    out, doc = tmp_path / "train.json", tmp_path / "BENCHMARKS.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.train", "--sizes", "32", "--rounds", "1", "--warmup", "0", "--batch-size", "2",
         "--load-size", "40", "--variants", "plain,pack,fused,channels_last,fast,fast_fp32_trained",
         "--pack", str(pack),
         "--content-dir", content, "--style-dir", style, "--threads", "1", "--device", "cpu", "--out", str(out),
         "--doc", str(doc), "--profile", "1"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    (size,) = data["sizes"]
    assert size["crop_size"] == 32 and size["step_gflop"] > 0
    variants = size["variants"]
    assert set(variants) == {"plain", "pack", "fused", "channels_last", "fast", "fast_fp32_trained"}
    assert variants["plain"]["speedup_vs_plain"] == pytest.approx(1.0)
    for row in variants.values():
        assert row["median_s"] > 0 and row["images_per_s"] > 0 and len(row["losses"]) == 1
    # Same seed, same first batch, same loss: the levers change speed, not the loss.
    assert variants["pack"]["losses"] == pytest.approx(variants["plain"]["losses"], rel=1e-4)
    assert "fused_encode=True" in variants["fast"]["levers"]
    assert "bf16_trained=False" in variants["fast_fp32_trained"]["levers"]
    assert data["matmul"]["flops_per_s"] > 0
    prof = size["profile"]  # of the last variant named
    assert prof["variant"] == "fast_fp32_trained" and prof["steps"] == 1 and len(prof["sec_per_step"]) == 1
    ops = {o["op"]: o for o in prof["ops"]}
    assert "aten::convolution_backward" in ops and all(o["self_ms_per_step"] >= 0 for o in ops.values())
    assert 0 < sum(o["share"] for o in ops.values()) <= 1.0 + 1e-9
    text = doc.read_text()
    assert "<!-- BEGIN bench/train.py -->" in text and "speed-up vs plain" in text and "GFLOP" in text
    assert "Profile of the fast_fp32_trained step" in text
