"""The OpenVINO backend: the same exported ONNX graphs (model/graphs.py) compiled by OpenVINO's CPU plugin,
float32 (``openvino``) or the int8 set (``openvino-int8``: the QDQ graphs model/quantize.py writes, which
OpenVINO reads as FakeQuantize and runs with its own int8 kernels; no NNCF pass of its own).

CPU only: OpenVINO's GPU plugin is for Intel GPUs, and STYA2K_DEVICE=cuda has the onnxruntime backend. Inference
precision is pinned to f32 (the plugin would pick bf16 by itself on a CPU with AMX / AVX-512 BF16, outside the
float32 tolerance); threads as STYA2K_THREADS (torch's count by default); one stream, latency hint: the service
runs one batch at a time. Compiled kernels are not cached on disk (the sessions take a second or two to compile).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.graphs import GRAPHS, GraphSet
from service.backends.graph_backend import GraphBackend

log = logging.getLogger("service.backends.openvino_runtime")


class OpenVinoBackend(GraphBackend):
    runtime = "openvino"

    def __init__(self, cache_root: Path, weights_sha256: str | None = None, threads: int = 0,
                 export: bool = True, precision: str = "float32") -> None:
        super().__init__(cache_root, weights_sha256, threads, export, precision)
        self._requests: dict[str, Any] = {}
        self._outputs: dict[str, list[Any]] = {}

    def _open(self, graphs: GraphSet) -> None:
        import openvino as ov

        if self.device.type != "cpu":
            raise RuntimeError(f"STYA2K_DEVICE={self.device}: the openvino backend runs on the CPU; use "
                               "STYA2K_BACKEND=onnxruntime (CUDA / TensorRT providers) or torch on a GPU")
        core = ov.Core()
        config = {
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": "1",
            "INFERENCE_NUM_THREADS": str(self.threads or torch.get_num_threads()),
            # The service's request threads (decode, encode, HTTP) share these cores: no pinning to them.
            "ENABLE_CPU_PINNING": "NO",
            # Off: with OpenVINO's shape-keyed primitive cache, the transfer graph run at one size (64 px content:
            # the engine's warm-up) answers later sizes (256 px) wrongly (relu4_1 off by up to 190 where ONNX
            # Runtime agrees with torch; tests/service/backends/test_contract.py's size sequence). Measured cost
            # at a fixed 512 px shape: none (docs/BENCHMARKS.md, issue 29).
            "CPU_RUNTIME_CACHE_CAPACITY": "0",
        }
        for graph in GRAPHS:
            compiled = core.compile_model(core.read_model(str(graphs.path(graph))), "CPU", config)
            self._requests[graph] = compiled.create_infer_request()
            self._outputs[graph] = list(compiled.outputs)

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> Sequence[np.ndarray]:
        # share_outputs=False: the results are copies; the request's own buffers are rewritten by its next run
        # (the encoder runs for the style, then for the content, while the first result is still in use).
        result = self._requests[graph].infer(feeds, share_inputs=False, share_outputs=False)
        return [result[output] for output in self._outputs[graph]]

    def info(self) -> dict[str, Any]:
        import openvino as ov

        return {
            "provider": "CPU",
            "providers": ["CPU"],
            "openvino": ov.get_version(),
            **super().info(),
        }
