"""int8 graphs: ONNX Runtime static quantization of the exported graphs (model/graphs.py), calibrated on real images.

What is quantized: the convolutions of the ``decoder`` graph only. Measured on the trained weights (v0.6, 16
calibration images at 256 px, 4 held-out training-pool pairs at 384 px, vs the float32 graphs): decoder only mean
1.6 / p99 5.7 levels, LPIPS 0.005, the decoder 1.85x faster (1.44 -> 0.78 s at 512 x 342 on 2 AVX2 cores);
encoder and decoder mean 7.3 / p99 28 levels, LPIPS 0.067 (over the 0.02 bound: the VGG features feed A2K's
statistics and block matching, which magnify their error), for 1.4x on the encoder. The ``transfer`` graph (A2K:
projections, block attention, softmax) stays float32: a softmax over int8 dot products moves which blocks match,
and it is the smallest of the three (0.5 of 3.5 s).

Format: QDQ (QuantizeLinear / DequantizeLinear pairs around float ops), so every runtime that reads ONNX can run
the same file (ONNX Runtime fuses the pairs into int8 kernels; OpenVINO reads them as FakeQuantize); weights
int8 per output channel (symmetric), activations uint8 per tensor (the U8S8 kernels ONNX Runtime's CPU provider
has on every x86 CPU). ``reduce_range`` (7-bit weights): AVX2 without VNNI multiplies u8 x s8 pairs into a
saturating int16 (vpmaddubsw), and 7-bit weights keep the sum of a pair inside it, so the result does not depend
on which CPU runs it (measured without it, encoder and decoder: LPIPS 0.093 against 0.067 with it).

Calibration: activation ranges from ``count`` images of a folder (the training pool: ``content/`` and ``style/``
halves, picked evenly over the sorted file list) at ``side`` px on the long side, encoded through the float32
graphs; the decoder is calibrated on the transferred features of content i with style i. MinMax, because ORT's
histogram methods (percentile, entropy) need every calibration input at one shape, and images are not. The set's
sha256 (the files' names and bytes, the side, the method and this module's format) is part of the cache key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from model.graphs import GRAPHS, META, GraphSet, GraphStages, _write_atomically
from model.imageio import IMAGE_SUFFIXES, pil_to_tensor
from model.stya2k import pad_image

log = logging.getLogger(__name__)

QUANT_FORMAT = 1  # bump when what is quantized, or how, changes: part of the calibration digest
QUANTIZED: tuple[str, ...] = ("decoder",)
CALIBRATION_COUNT = 32
CALIBRATION_SIDE = 384
METHOD = "minmax"  # ORT's CalibrationMethod.MinMax: the ranges seen, no clipping of the tails
QUALITY_FILE = "quality.json"  # int8 vs float32 on held-out images, written beside the graphs


@dataclass(frozen=True)
class CalibrationSet:
    """The images activation ranges are calibrated on (content and style halves) and the side they run at."""

    contents: tuple[Path, ...]
    styles: tuple[Path, ...]
    side: int = CALIBRATION_SIDE

    def digest(self) -> str:
        """sha256 of what the calibration depends on: the images' names and bytes, the side, the method."""
        h = hashlib.sha256(json.dumps({"format": QUANT_FORMAT, "side": self.side, "method": METHOD,
                                       "quantized": QUANTIZED}, sort_keys=True).encode())
        for kind, paths in (("content", self.contents), ("style", self.styles)):
            for path in paths:
                h.update(f"{kind}:{path.name}:".encode())
                h.update(path.read_bytes())
        return h.hexdigest()


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _spread(paths: Sequence[Path], count: int) -> list[Path]:
    """``count`` paths evenly spaced over the sorted list (deterministic; not the first few of one source)."""
    if len(paths) <= count:
        return list(paths)
    step = len(paths) / count
    return [paths[int(i * step)] for i in range(count)]


def calibration_set(folder: Path, count: int = CALIBRATION_COUNT, side: int = CALIBRATION_SIDE,
                    exclude: CalibrationSet | None = None) -> CalibrationSet:
    """Pick a calibration set from ``folder``: its ``content/`` and ``style/`` subfolders (half each, the training
    pool's layout) or, without them, the folder's own images used as both. ``exclude``: a set whose images are
    not picked (the quality check's held-out pairs exclude the calibration images)."""
    folder = Path(folder)
    content_dir, style_dir = folder / "content", folder / "style"
    if content_dir.is_dir() and style_dir.is_dir():
        contents, styles = _images(content_dir), _images(style_dir)
    else:
        contents = styles = _images(folder)
    if exclude is not None:
        taken = {*exclude.contents, *exclude.styles}
        contents, styles = [p for p in contents if p not in taken], [p for p in styles if p not in taken]
    if not contents or not styles:
        raise ValueError(f"no images to calibrate on in {folder} (want content/ and style/, or images)")
    half = max(1, count // 2)
    return CalibrationSet(tuple(_spread(contents, half)), tuple(_spread(styles, half)), side)


def load_image(path: Path, side: int) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1], the long side resized to ``side`` (aspect kept, at least 32 px a side)."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        scale = side / max(image.size)
        size = (max(32, round(image.width * scale)), max(32, round(image.height * scale)))
        return pil_to_tensor(image.resize(size, Image.Resampling.BICUBIC))[None]


class _Feeds:
    """An onnxruntime CalibrationDataReader over prepared feeds (duck-typed: ``get_next`` and ``rewind``)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = feeds
        self._iter: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self.feeds)


def calibration_feeds(stages: GraphStages, calibration: CalibrationSet) -> dict[str, list[dict[str, np.ndarray]]]:
    """The feeds of the graphs that can be quantized: padded images for the encoder, the transferred features of
    content i with style i for the decoder."""
    contents = [load_image(p, calibration.side) for p in calibration.contents]
    styles = [load_image(p, calibration.side) for p in calibration.styles]
    encoder = [{"image": pad_image(image)[0].numpy()} for image in contents + styles]
    decoder = []
    with torch.inference_mode():
        for content, style in zip(contents, styles, strict=False):
            content_feats = stages.encoder(pad_image(content)[0], stages.taps)
            transferred = stages.transfer(content_feats, stages.encode_style(style).feats)
            decoder.append({tap: transferred[tap].contiguous().numpy() for tap in stages.taps})
    return {"encoder": encoder, "decoder": decoder}


def quantize_graphs(fp32: GraphSet, folder: Path, stages: GraphStages, calibration: CalibrationSet,
                    digest: str | None = None, scope: Sequence[str] = QUANTIZED, method: str = METHOD,
                    reduce_range: bool = True) -> GraphSet:
    """Write the int8 graph set into ``folder``: the QUANTIZED graphs quantized (QDQ, per-channel int8 weights,
    calibrated on ``calibration`` through the float32 ``stages``), the others copied as they are."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    METHODS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}

    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    digest = digest or calibration.digest()
    feeds = calibration_feeds(stages, calibration)
    out = GraphSet(folder)
    for graph in GRAPHS:
        if graph not in scope:
            shutil.copyfile(fp32.path(graph), folder / f".{graph}.copy")
            (folder / f".{graph}.copy").replace(out.path(graph))
            continue
        temp = folder / f".{graph}.quantizing.onnx"
        quantize_static(
            str(fp32.path(graph)), str(temp), _Feeds(feeds[graph]), quant_format=QuantFormat.QDQ,
            per_channel=True, reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv"], calibrate_method=METHODS[method],
        )
        proto = onnx.load(str(temp))
        temp.unlink()
        for key, value in {"precision": "int8", "calibration_sha256": digest, "calibration_images":
                           str(len(calibration.contents) + len(calibration.styles)),
                           "calibration_side": str(calibration.side), "quantization": f"QDQ, Conv only, per-channel "
                           f"s8 weights (reduce_range), u8 activations, {METHOD}"}.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = META + key, value
        _write_atomically(out.path(graph), proto.SerializeToString())
    return out


# ---------------------------------------------------------------------------------------------- quality
def compare(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """Abs differences in levels of 255 between two image batches in [0, 1]: mean, p99, max."""
    diff = (other.float().clamp(0, 1) - reference.float().clamp(0, 1)).abs().flatten() * 255
    return {"mean_levels": round(float(diff.mean()), 3), "p99_levels": round(float(torch.quantile(
        diff[:: max(1, diff.numel() // 1_000_000)], 0.99)), 3), "max_levels": round(float(diff.max()), 3)}


def measure_quality(fp32: GraphStages, int8: GraphStages, calibration: CalibrationSet,
                    lpips: Any | None = None) -> dict[str, Any]:
    """int8 against float32 on the pairs of ``calibration`` (pass a held-out set): per-pair abs differences in
    levels and LPIPS (``model.lpips.LPIPS`` or None), and their means / worst."""
    pairs = []
    with torch.inference_mode():
        for content_path, style_path in zip(calibration.contents, calibration.styles, strict=False):
            content = load_image(content_path, calibration.side)
            style = load_image(style_path, calibration.side)
            want = fp32.stylize_from_features(content, [fp32.encode_style(style)]).clamp(0, 1)
            got = int8.stylize_from_features(content, [int8.encode_style(style)]).clamp(0, 1)
            row: dict[str, Any] = {"content": content_path.name, "style": style_path.name, **compare(want, got)}
            row["lpips"] = round(float(lpips(want, got)[0]), 5) if lpips is not None else None
            pairs.append(row)
    lpips_values = [p["lpips"] for p in pairs if p["lpips"] is not None]
    return {
        "pairs": len(pairs), "side": calibration.side,
        "mean_levels": round(float(np.mean([p["mean_levels"] for p in pairs])), 3),
        "p99_levels": round(float(np.mean([p["p99_levels"] for p in pairs])), 3),
        "max_levels": max(p["max_levels"] for p in pairs),
        "lpips_mean": round(float(np.mean(lpips_values)), 5) if lpips_values else None,
        "lpips_max": max(lpips_values) if lpips_values else None,
        "per_pair": pairs,
    }
