"""The ONNX Runtime backend: the exported graphs (model/graphs.py) in ONNX Runtime sessions.

CPU: the CPU execution provider. GPU (STYA2K_DEVICE=cuda, onnxruntime-gpu installed): TensorRT first when that
provider is there (its engines cached beside the graphs), then CUDA, then the CPU for what neither takes. The GPU
providers are coded but not verified on a GPU yet (docs/DEPLOY.md).

Graphs are exported once per weights and cached outside the work tree: ``<cache>/graphs/<weights sha256[:16]>-
f<format>-dynamic/{encoder,transfer,decoder}.onnx`` (``<cache>``: model.pack.default_cache_dir, STYA2K_CACHE);
provider artefacts (TensorRT engines) go in a subfolder per provider. The shape part of the key is ``dynamic``:
one set of graphs serves every size (model/graphs.py says why).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model import StyA2K, StyleFeatures
from model.graphs import GRAPH_FORMAT, GRAPHS, GraphSet, GraphStages, export_graphs, network_digest, read_metadata
from service.backends.base import Capabilities

log = logging.getLogger("service.backends.onnx_runtime")

# Tolerance: the same float32 arithmetic in other kernels; measured 5e-8 (random weights) to 5.5e-6 (trained, 512
# px, issue 29) max abs on [0, 1] outputs; 1e-3 leaves room for a rare flipped block match (a quarter of 1/255).
CAPABILITIES = Capabilities(
    dtypes=("float32",), batching=True, tiling=True, masks=True, max_batch=None, tolerance=1e-3
)


def graph_folder(cache_root: Path, weights_key: str) -> Path:
    """Where the graphs of one network live: keyed by its weights' sha256, the graph format and the shape mode."""
    return cache_root / "graphs" / f"{weights_key[:16]}-f{GRAPH_FORMAT}-dynamic"


def providers_for(device: torch.device, folder: Path) -> list[Any]:
    """The execution providers for ``device``, best first (ONNX Runtime falls back along the list per node)."""
    import onnxruntime as ort

    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    index = device.index or 0
    chosen: list[Any] = []
    if "TensorrtExecutionProvider" in available:
        engines = folder / "TensorrtExecutionProvider"
        engines.mkdir(parents=True, exist_ok=True)
        chosen.append(("TensorrtExecutionProvider", {
            "device_id": index, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(engines),
            "trt_timing_cache_enable": True, "trt_timing_cache_path": str(engines),
        }))  # fmt: skip
    if "CUDAExecutionProvider" in available:
        chosen.append(("CUDAExecutionProvider", {"device_id": index}))
    if not chosen:
        raise RuntimeError(
            f"STYA2K_DEVICE={device} but this onnxruntime has no CUDA or TensorRT provider (available: "
            f"{', '.join(available)}); install onnxruntime-gpu, or use STYA2K_BACKEND=torch"
        )
    return [*chosen, "CPUExecutionProvider"]


class OnnxRuntimeBackend:
    name = "onnxruntime"
    capabilities = CAPABILITIES

    def __init__(self, cache_root: Path, weights_sha256: str | None = None, threads: int = 0,
                 export: bool = True) -> None:
        self.cache_root = cache_root
        self.weights_sha256 = weights_sha256
        self.threads = threads
        self.export = export  # False: use cached graphs only (start-up must not pay an export)
        self.device = torch.device("cpu")
        self.graphs: GraphSet | None = None
        self.export_s: float | None = None  # seconds the cold export took (None: the graphs were cached)
        self.session_s: float | None = None
        self.providers: list[str] = []
        self._sessions: dict[str, Any] = {}
        self._stages: GraphStages | None = None

    # ------------------------------------------------------------------ loading
    def graph_set(self, net: StyA2K) -> GraphSet:
        return GraphSet(graph_folder(self.cache_root, self.weights_sha256 or network_digest(net)))

    def load(self, net: StyA2K, device: torch.device, precision: torch.dtype | None) -> None:
        import onnxruntime as ort

        if precision is not None:
            raise ValueError(f"the onnxruntime backend runs float32 graphs, not {precision}")
        self.device = device
        graphs = self.graph_set(net)
        if not graphs.complete():
            if not self.export:
                raise FileNotFoundError(f"no exported graphs in {graphs.folder} (run `stya2k export-graph`)")
            started = time.monotonic()
            log.info("exporting the network's graphs (once per weights)", extra={"folder": str(graphs.folder)})
            export_graphs(net, graphs.folder, self.weights_sha256)
            self.export_s = round(time.monotonic() - started, 3)
        started = time.monotonic()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        # Idle intra-op threads sleep instead of spinning, as the service's OpenMP threads do (OMP_WAIT_POLICY=
        # PASSIVE): a spinning pool would take the cores from the request threads and from torch's glue.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = providers_for(device, graphs.folder)
        self._sessions = {
            graph: ort.InferenceSession(str(graphs.path(graph)), options, providers=providers) for graph in GRAPHS
        }
        self.providers = list(self._sessions["transfer"].get_providers())
        self.session_s = round(time.monotonic() - started, 3)
        self._stages = GraphStages.from_metadata(self._run, read_metadata(graphs.path("encoder")))
        self.graphs = graphs

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> Sequence[np.ndarray]:
        return self._sessions[graph].run(None, feeds)

    @property
    def network(self) -> GraphStages:
        if self._stages is None:
            raise RuntimeError("the model is not loaded yet (Engine.load)")
        return self._stages

    @property
    def tensor_device(self) -> torch.device:
        """Tensors go in and out on the CPU; the provider moves them to its device itself."""
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
        """Session runs return when their outputs are on the host."""

    def recover(self, exc: BaseException) -> bool:
        return False  # no plainer mode to fall back to

    def release_memory(self) -> None:
        """ONNX Runtime's arenas are its own; nothing to hand back between runs."""

    def info(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "provider": self.providers[0] if self.providers else None,
            "providers": self.providers,
            "onnxruntime": ort.__version__,
            "graphs": str(self.graphs.folder) if self.graphs else None,
            "graphs_exported_s": self.export_s,  # None: found in the cache
            "sessions_s": self.session_s,
        }
