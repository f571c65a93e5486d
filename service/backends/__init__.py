"""Inference backends: one module per runtime behind :class:`service.backends.base.InferenceBackend`.

``torch`` is always there; ``onnxruntime`` runs the exported graphs (model/graphs.py) when the ``onnx`` extra is
installed (``pip install .[onnx]``).
"""

from __future__ import annotations

import importlib.util

BACKENDS: tuple[str, ...] = ("torch", "onnxruntime")


def missing_packages(name: str) -> list[str]:
    """The packages a backend needs that this environment lacks ([] = it can run here)."""
    if name == "torch":
        return []
    if name == "onnxruntime":
        return [package for package in ("onnx", "onnxruntime") if importlib.util.find_spec(package) is None]
    raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")


def available_backends() -> tuple[str, ...]:
    return tuple(name for name in BACKENDS if not missing_packages(name))
