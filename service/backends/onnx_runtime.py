"""The ONNX Runtime backend: the exported graphs (model/graphs.py) in ONNX Runtime sessions, float32
(``onnxruntime``) or with the decoder quantized to int8 (``onnxruntime-int8``, model/quantize.py).

CPU: the CPU execution provider. GPU (STYA2K_DEVICE=cuda, onnxruntime-gpu installed): TensorRT first when that
provider is there (its engines cached beside the graphs), then CUDA, then the CPU for what neither takes. The GPU
providers are coded but not verified on a GPU yet (docs/DEPLOY.md). Graph cache: service/backends/graph_backend.py.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.graphs import GRAPHS, GraphSet
from service.backends.graph_backend import FLOAT32, GraphBackend, graph_folder

log = logging.getLogger("service.backends.onnx_runtime")

CAPABILITIES = FLOAT32  # the float32 backend's (the int8 one declares graph_backend.INT8)
__all__ = ["CAPABILITIES", "OnnxRuntimeBackend", "graph_folder", "providers_for"]


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


class OnnxRuntimeBackend(GraphBackend):
    runtime = "onnxruntime"

    def __init__(self, cache_root: Path, weights_sha256: str | None = None, threads: int = 0,
                 export: bool = True, precision: str = "float32") -> None:
        super().__init__(cache_root, weights_sha256, threads, export, precision)
        self.providers: list[str] = []
        self._sessions: dict[str, Any] = {}

    def _open(self, graphs: GraphSet) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        # Idle intra-op threads sleep instead of spinning, as the service's OpenMP threads do (OMP_WAIT_POLICY=
        # PASSIVE): a spinning pool would take the cores from the request threads and from torch's glue.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = providers_for(self.device, graphs.folder)
        self._sessions = {
            graph: ort.InferenceSession(str(graphs.path(graph)), options, providers=providers) for graph in GRAPHS
        }
        self.providers = list(self._sessions["transfer"].get_providers())

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> Sequence[np.ndarray]:
        return self._sessions[graph].run(None, feeds)

    def info(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "provider": self.providers[0] if self.providers else None,
            "providers": self.providers,
            "onnxruntime": ort.__version__,
            **super().info(),
        }
