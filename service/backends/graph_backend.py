"""What every backend over the exported graphs (model/graphs.py) shares: finding or exporting the graphs in the
cache, the int8 variant, and the torch glue between the graphs (model.graphs.GraphStages). A runtime module
(onnx_runtime.py, openvino_runtime.py) only opens the three graph files and runs one of them.

Cache layout (``<cache>``: model.checkpoint.default_cache_dir, STYA2K_CACHE)::

    <cache>/graphs/<weights sha256[:16]>-f<format>-dynamic/{encoder,transfer,decoder}.onnx       float32
    <cache>/graphs/<weights sha256[:16]>-f<format>-dynamic/int8-<calibration sha256[:16]>/...    int8
                                                                             .../quality.json    int8 vs float32

The shape part of the key is ``dynamic``: one set of graphs serves every size (model/graphs.py says why).
float32 graphs are exported on first use; int8 graphs need calibration images, which a deployment does not
have, so only ``stya2k export-graph --int8 --calibration DIR`` writes them (the service refuses without them).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model import StyA2K, StyleFeatures
from model.graphs import GRAPH_FORMAT, GraphSet, GraphStages, export_graphs, network_digest, read_metadata
from model.quantize import QUALITY_FILE
from service.backends.base import Capabilities

log = logging.getLogger("service.backends.graph_backend")

# float32: the same arithmetic in other kernels; measured 5e-8 (random weights) to 5.5e-6 (trained, 512 px,
# issue 29) max abs on [0, 1] outputs; 1e-3 leaves room for a rare flipped block match (a quarter of 1/255).
FLOAT32 = Capabilities(dtypes=("float32",), batching=True, tiling=True, masks=True, max_batch=None, tolerance=1e-3)
# int8 (the decoder's convolutions, model/quantize.py): a per-pixel bound is loose by nature (one quantisation
# step of an activation moves a pixel by a few levels, and edges more); the mean bound catches a broken kernel
# (7-bit weights off, AVX2: 18 levels mean) and the LPIPS record is the quality bound. Trained weights, 384 px, 4
# held-out pairs: mean 1.9, p99 6.6, max 20 levels, LPIPS 0.006; the start-up probe's white-noise style at 128 px:
# mean 3.7, max 35 levels.
INT8 = Capabilities(dtypes=("int8",), batching=True, tiling=True, masks=True, max_batch=None, tolerance=0.25,
                    mean_tolerance=6 / 255)
# STYA2K_BACKEND=auto takes an int8 backend only when its graphs' quality record (held-out training-pool pairs,
# measured when they were quantized) has a mean LPIPS vs float32 at most this: the quality bound.
INT8_LPIPS_BOUND = 0.02


def graph_folder(cache_root: Path, weights_key: str) -> Path:
    """Where the float32 graphs of one network live: keyed by its weights' sha256, the graph format and the
    shape mode."""
    return cache_root / "graphs" / f"{weights_key[:16]}-f{GRAPH_FORMAT}-dynamic"


def int8_folder(fp32_folder: Path, calibration_sha256: str) -> Path:
    return fp32_folder / f"int8-{calibration_sha256[:16]}"


def newest_int8(fp32_folder: Path) -> GraphSet | None:
    """The most recently quantized complete int8 set of these graphs (several calibrations may be cached)."""
    sets = [GraphSet(p) for p in fp32_folder.glob("int8-*") if p.is_dir() and GraphSet(p).complete()]
    return max(sets, key=lambda s: s.path("decoder").stat().st_mtime, default=None)


def read_quality(graphs: GraphSet) -> dict[str, Any] | None:
    path = graphs.folder / QUALITY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


class GraphBackend:
    """The shared part of the graph backends; a subclass sets ``runtime`` and implements :meth:`_open`."""

    runtime = ""  # "onnxruntime", "openvino"

    def __init__(self, cache_root: Path, weights_sha256: str | None = None, threads: int = 0,
                 export: bool = True, precision: str = "float32") -> None:
        if precision not in ("float32", "int8"):
            raise ValueError(f"graph backends run float32 or int8 graphs, not {precision}")
        self.cache_root = cache_root
        self.weights_sha256 = weights_sha256
        self.threads = threads
        self.export = export  # False: use cached graphs only (start-up must not pay an export)
        self.precision = precision
        self.name = self.runtime if precision == "float32" else f"{self.runtime}-{precision}"
        self.capabilities = FLOAT32 if precision == "float32" else INT8
        self.device = torch.device("cpu")
        self.graphs: GraphSet | None = None
        self.quality: dict[str, Any] | None = None  # int8: the record written when the graphs were quantized
        self.export_s: float | None = None  # seconds the cold export took (None: the graphs were cached)
        self.session_s: float | None = None
        self._stages: GraphStages | None = None

    # ------------------------------------------------------------------ loading
    def graph_set(self, net: StyA2K) -> GraphSet:
        """The graphs this backend runs (float32, or the newest int8 set of them); may not exist yet."""
        fp32 = GraphSet(graph_folder(self.cache_root, self.weights_sha256 or network_digest(net)))
        if self.precision == "float32":
            return fp32
        return newest_int8(fp32.folder) or GraphSet(fp32.folder / "int8-none")

    def load(self, net: StyA2K, device: torch.device, precision: torch.dtype | None) -> None:
        if precision is not None:
            raise ValueError(f"the {self.name} backend runs {self.precision} graphs; torch precision {precision} "
                             "is for the torch backend")
        self.device = device
        graphs = self.graph_set(net)
        if not graphs.complete():
            if self.precision == "int8":
                raise FileNotFoundError(
                    f"no int8 graphs of these weights in {graphs.folder.parent} (quantize them once with `stya2k "
                    "export-graph --int8 --calibration DIR`, DIR holding content/ and style/ images)")
            if not self.export:
                raise FileNotFoundError(f"no exported graphs in {graphs.folder} (run `stya2k export-graph`)")
            started = time.monotonic()
            log.info("exporting the network's graphs (once per weights)", extra={"folder": str(graphs.folder)})
            export_graphs(net, graphs.folder, self.weights_sha256)
            self.export_s = round(time.monotonic() - started, 3)
        self.open_graphs(graphs)

    def open_graphs(self, graphs: GraphSet) -> GraphStages:
        """Run these graph files (complete; what :meth:`load` does once it found or exported them)."""
        started = time.monotonic()
        self._open(graphs)
        self.session_s = round(time.monotonic() - started, 3)
        self._stages = GraphStages.from_metadata(self._run, read_metadata(graphs.path("encoder")))
        self.graphs = graphs
        self.quality = read_quality(graphs) if self.precision == "int8" else None
        return self._stages

    def _open(self, graphs: GraphSet) -> None:
        """Open the three graph files for running on ``self.device``."""
        raise NotImplementedError

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> Sequence[np.ndarray]:
        """Run one graph: its outputs in order, as arrays the caller owns."""
        raise NotImplementedError

    def int8_quality_ok(self) -> tuple[bool, str]:
        """Whether the int8 graphs' quality record meets INT8_LPIPS_BOUND (what auto requires), and why."""
        lpips = (self.quality or {}).get("lpips_mean")
        if lpips is None:
            return False, "its graphs have no LPIPS record (quantized without LPIPS weights)"
        verdict = "<=" if lpips <= INT8_LPIPS_BOUND else ">"
        return lpips <= INT8_LPIPS_BOUND, f"recorded LPIPS {lpips:.4f} {verdict} {INT8_LPIPS_BOUND} vs float32"

    @property
    def network(self) -> GraphStages:
        if self._stages is None:
            raise RuntimeError("the model is not loaded yet (Engine.load)")
        return self._stages

    @property
    def tensor_device(self) -> torch.device:
        """Tensors go in and out on the CPU; the runtime moves them to its device itself."""
        return torch.device("cpu")

    # ------------------------------------------------------------------ running
    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        with torch.inference_mode():  # the glue between the graphs (padding, statistics, mixing) is torch
            yield

    def encode_styles(self, images: torch.Tensor) -> StyleFeatures:
        return self.network.encode_style(images)

    def run(
        self,
        content: torch.Tensor,
        styles: Sequence[StyleFeatures],
        weights: torch.Tensor | None,
        alpha: torch.Tensor | float,
    ) -> torch.Tensor:
        return self.network.stylize_from_features(content, styles, weights, alpha)

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def synchronize(self) -> None:
        """Graph runs return when their outputs are on the host."""

    def recover(self, exc: BaseException) -> bool:
        return False  # no plainer mode to fall back to

    def release_memory(self) -> None:
        """The runtime's arenas are its own; nothing to hand back between runs."""

    def info(self) -> dict[str, Any]:
        quality = dict(self.quality or {})
        quality.pop("per_pair", None)
        return {
            "graphs": str(self.graphs.folder) if self.graphs else None,
            "graphs_precision": self.precision,
            "graphs_exported_s": self.export_s,  # None: found in the cache
            "sessions_s": self.session_s,
            **({"int8_quality": quality or None, "int8_lpips_bound": INT8_LPIPS_BOUND}
               if self.precision == "int8" else {}),
        }
