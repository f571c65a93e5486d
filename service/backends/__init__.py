"""Inference backends: one module per runtime behind :class:`service.backends.base.InferenceBackend`.

``torch`` is always there. The graph backends run the exported graphs (model/graphs.py): ``onnxruntime`` and
``onnxruntime-int8`` with the ``onnx`` extra (``pip install .[onnx]``), ``openvino`` and ``openvino-int8`` with
the ``openvino`` extra as well. The ``-int8`` ones run the graphs quantized by ``stya2k export-graph --int8``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.backends.graph_backend import GraphBackend

BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "onnxruntime-int8", "openvino", "openvino-int8")
GRAPH_BACKENDS: tuple[str, ...] = BACKENDS[1:]
_PACKAGES = {"onnxruntime": ("onnx", "onnxruntime"), "openvino": ("onnx", "onnxruntime", "openvino")}
EXTRAS = {"onnxruntime": "onnx", "openvino": "onnx,openvino"}  # pip install 'stya2k-serve[...]'


def runtime_of(name: str) -> str:
    """The runtime of a backend name ("onnxruntime-int8" -> "onnxruntime")."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    return name.split("-", 1)[0]


def missing_packages(name: str) -> list[str]:
    """The packages a backend needs that this environment lacks ([] = it can run here). The openvino backends
    need onnx and onnxruntime too: exporting checks the graphs with onnx, int8 graphs are quantized by ORT."""
    runtime = runtime_of(name)
    if runtime == "torch":
        return []
    return [package for package in _PACKAGES[runtime] if importlib.util.find_spec(package) is None]


def install_hint(name: str) -> str:
    return f"pip install 'stya2k-serve[{EXTRAS[runtime_of(name)]}]'"


def available_backends() -> tuple[str, ...]:
    return tuple(name for name in BACKENDS if not missing_packages(name))


def make_graph_backend(name: str, cache_root: Path, weights_sha256: str | None, threads: int = 0,
                  export: bool = True) -> GraphBackend:
    """A graph backend by name, not loaded yet."""
    runtime, _, precision = name.partition("-")
    if name not in GRAPH_BACKENDS:
        raise ValueError(f"{name!r} is not a graph backend; known: {', '.join(GRAPH_BACKENDS)}")
    if runtime == "openvino":
        from service.backends.openvino_runtime import OpenVinoBackend

        return OpenVinoBackend(cache_root, weights_sha256, threads, export, precision or "float32")
    from service.backends.onnx_runtime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(cache_root, weights_sha256, threads, export, precision or "float32")
