"""int8 graphs (model/quantize.py): which images calibrate, what the cache key covers, what is quantized, and the
quality record (the quantization itself runs once per session: the int8_graphs fixture, `stya2k export-graph
--int8` on generated images)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from model.graphs import GRAPHS, read_metadata
from model.quantize import QUALITY_FILE, QUANTIZED, CalibrationSet, calibration_set, compare

TRAIN_POOL = Path(__file__).resolve().parents[3] / "shared" / "data" / "train"


def write_images(folder: Path, count: int, tint: int = 0) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for index in range(count):
        path = folder / f"{index:03d}.png"
        Image.new("RGB", (40 + index, 36), (index * 7 % 256, 90 + tint, 160)).save(path)
        paths.append(path)
    return paths


def test_the_set_takes_content_and_style_halves_spread_over_the_folders(tmp_path: Path) -> None:
    contents = write_images(tmp_path / "content", 40)
    styles = write_images(tmp_path / "style", 20)
    chosen = calibration_set(tmp_path, count=8, side=64)
    assert len(chosen.contents) == len(chosen.styles) == 4 and chosen.side == 64
    assert chosen.contents == (contents[0], contents[10], contents[20], contents[30])  # spread, not the first 4
    assert chosen.styles == (styles[0], styles[5], styles[10], styles[15])
    held = calibration_set(tmp_path, count=8, side=64, exclude=chosen)
    assert not set(held.contents) & set(chosen.contents) and not set(held.styles) & set(chosen.styles)


def test_a_flat_folder_serves_as_both_halves_and_an_empty_one_is_refused(tmp_path: Path) -> None:
    write_images(tmp_path / "flat", 6)
    chosen = calibration_set(tmp_path / "flat", count=4)
    assert chosen.contents == chosen.styles and len(chosen.contents) == 2
    held = calibration_set(tmp_path / "flat", count=4, exclude=chosen)
    assert len(held.contents) == 2 and not set(held.contents) & set(chosen.contents)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images to calibrate on"):
        calibration_set(tmp_path / "empty")


def test_the_digest_covers_the_bytes_the_names_and_the_side(tmp_path: Path) -> None:
    contents, styles = write_images(tmp_path / "c", 2), write_images(tmp_path / "s", 2, tint=50)
    base = CalibrationSet(tuple(contents), tuple(styles), 96)
    digest = base.digest()
    assert digest == CalibrationSet(tuple(contents), tuple(styles), 96).digest()
    assert digest != CalibrationSet(tuple(contents), tuple(styles), 128).digest()
    assert digest != CalibrationSet(tuple(styles), tuple(contents), 96).digest()  # roles count
    Image.new("RGB", (41, 36), (1, 2, 3)).save(contents[1])
    assert digest != base.digest()


def test_only_the_decoder_is_quantized_and_the_files_say_how(int8_graphs: Path, graph_cache: Path) -> None:
    import onnx

    assert QUANTIZED == ("decoder",)
    fp32_folder = int8_graphs.parent
    quality = json.loads((int8_graphs / QUALITY_FILE).read_text())
    for graph in GRAPHS:
        ops = {node.op_type for node in onnx.load(str(int8_graphs / f"{graph}.onnx")).graph.node}
        if graph in QUANTIZED:
            assert {"QuantizeLinear", "DequantizeLinear"} <= ops
            meta = read_metadata(int8_graphs / f"{graph}.onnx")
            assert meta["precision"] == "int8" and "per-channel" in meta["quantization"]
            assert meta["calibration_sha256"] == quality["calibration_sha256"]
            assert int8_graphs.name == f"int8-{quality['calibration_sha256'][:16]}"
        else:  # copied as they are
            assert (int8_graphs / f"{graph}.onnx").read_bytes() == (fp32_folder / f"{graph}.onnx").read_bytes()
            assert "QuantizeLinear" not in ops
    assert quality["pairs"] == len(quality["per_pair"]) > 0
    assert 0 < quality["mean_levels"] <= quality["p99_levels"] <= quality["max_levels"]


def test_compare_reports_levels() -> None:
    a = torch.zeros(1, 3, 10, 10)
    b = a.clone()
    b[0, 0, 0, 0] = 1.0
    result = compare(a, b)
    assert result["max_levels"] == 255.0 and result["mean_levels"] == round(255 / 300, 3)


@pytest.mark.skipif(not TRAIN_POOL.is_dir(), reason="the training pool (../shared/data/train) is not here")
def test_the_training_pool_gives_32_images_and_a_disjoint_held_out_set() -> None:
    chosen = calibration_set(TRAIN_POOL)
    held = calibration_set(TRAIN_POOL, count=8, exclude=chosen)
    assert len(chosen.contents) == len(chosen.styles) == 16
    assert all(p.parent.name == "content" for p in chosen.contents)
    assert all(p.parent.name == "style" for p in chosen.styles)
    assert not set(held.contents) & set(chosen.contents) and not set(held.styles) & set(chosen.styles)
