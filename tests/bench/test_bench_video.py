"""Smoke run of bench/video.py on a tiny synthetic clip (no ../shared needed), and its skip without clips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("cv2", reason="opencv-python-headless not installed")

from bench import video
from model.imageio import tensor_to_pil


def _write_clip(folder: Path, frames: int) -> None:
    """A smooth random scene panning right by 2 px per frame, as 64x80 JPEGs 0000.jpg, 0001.jpg, ..."""
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    scene = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 14, generator=gen), size=(64, 120), mode="bicubic")
    for t in range(frames):
        tensor_to_pil(scene[0, :, :, 30 - 2 * t : 110 - 2 * t].clamp(0, 1)).save(folder / f"{t:04d}.jpg", quality=95)


def test_video_benchmark_smoke(tmp_path: Path) -> None:
    _write_clip(tmp_path / "clips" / "pan", frames=4)
    (tmp_path / "styles").mkdir()
    style = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    tensor_to_pil(style[0]).save(tmp_path / "styles" / "noise.png")
    out, doc, md = tmp_path / "video.json", tmp_path / "BENCHMARKS.md", tmp_path / "quality.md"
    assert video.main(["--video-dir", str(tmp_path / "clips"), "--style-dir", str(tmp_path / "styles"),
                       "--style-pool", "1", "--styles", "1", "--size", "64", "--frames", "3",
                       "--strengths", "0.5", "--out", str(out), "--doc", str(doc), "--out-md", str(md)]) == 0
    result = json.loads(out.read_text())
    (clip,) = result["clips"]
    assert clip["frames"] == 3 and clip["valid_fraction"] > 0.5
    (per_style,) = clip["styles"].values()
    smoothed = per_style["smoothed"]["0.5"]
    assert smoothed["warping_error"] < per_style["none"]["warping_error"] or per_style["none"]["warping_error"] == 0
    assert smoothed["smooth_s_per_frame"] > 0 and per_style["stylize_s_per_frame"] > 0
    assert 0 < smoothed["sharpness_ratio"] <= 1.5 and smoothed["cuts"] == 0
    assert "<!-- BEGIN bench/video.py -->" in doc.read_text() and "Static flicker" in md.read_text()


def test_video_benchmark_skips_without_clips(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "video.json"
    assert video.main(["--video-dir", str(tmp_path / "absent"), "--out", str(out), "--no-doc"]) == 0
    assert not out.exists() and "nothing to measure" in caplog.text
