"""bench/backend_quality.py end to end on a tiny set: the harness's columns for torch and a graph backend, from
the session's exported graphs (never a new export; the graph_cache fixture skips without onnx)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image


def _images(folder: Path, count: int, seed: int, photo_like: Callable[..., torch.Tensor]) -> None:
    folder.mkdir(parents=True)
    for index in range(count):
        image = photo_like(seed + index, 1, 64, 80)[0]  # (3, H, W)
        array = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(array).save(folder / f"{index}.png")


def test_harness_rows_per_backend(
    tmp_path: Path,
    graph_cache: Path,
    seeded_weights: Path,
    photo_like: Callable[..., torch.Tensor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bench import backend_quality

    _images(tmp_path / "content", 2, 0, photo_like)
    _images(tmp_path / "style", 2, 50, photo_like)
    monkeypatch.setenv("STYA2K_CACHE", str(graph_cache))
    out = tmp_path / "quality.json"
    assert backend_quality.main([
        "--backends", "torch,onnxruntime", "--weights", str(seeded_weights), "--content-dir",
        str(tmp_path / "content"), "--style-dir", str(tmp_path / "style"), "--n-content", "2", "--n-style", "2",
        "--size", "64", "--lpips-dir", str(tmp_path / "no-lpips"), "--out", str(out),
    ]) == 0  # fmt: skip
    torch_row, graph_row = json.loads(out.read_text())["results"]
    assert (torch_row["backend"], graph_row["backend"]) == ("torch", "onnxruntime")
    assert torch_row["pairs"] == graph_row["pairs"] == 4
    for column in ("content_loss", "style_loss", "texture_loss", "style_retrieval"):
        # The float32 graphs compute what torch computes: the same columns to a few parts in a thousand.
        assert graph_row[column] == pytest.approx(torch_row[column], rel=2e-3, abs=1e-4), column
