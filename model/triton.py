"""A Triton Inference Server model repository of the exported graphs (``stya2k export-graph --triton DIR``).

One model per graph, each for Triton's ``onnxruntime`` backend::

    DIR/stya2k_encoder/config.pbtxt   DIR/stya2k_encoder/1/model.onnx
    DIR/stya2k_transfer/config.pbtxt  DIR/stya2k_transfer/1/model.onnx
    DIR/stya2k_decoder/config.pbtxt   DIR/stya2k_decoder/1/model.onnx

No ensemble: between the graphs runs glue an ensemble cannot express without a Python-backend model of its own
(each layer's maps padded to its block grid with a size-dependent rule, the per-channel statistics of the unpadded
maps, the per-style weight maps and masks, alpha, the crop back; model.graphs.GraphStages). The client chains the
three models instead: ``GraphStages(run)`` with ``run`` sending one graph's feeds to Triton (docs/DEPLOY.md has
it), so the style cache, interpolation, masks and tiling keep working exactly as in this service.

Sizes: ``max_batch_size: 0`` and the batch as the first of the ``dims`` (-1): the graphs carry their own dynamic
batch axis, and the client batches for itself. Every other dynamic axis is -1; channel counts are fixed.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from model.graphs import GRAPHS, GraphSet

MODEL_PREFIX = "stya2k_"
_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 7: "TYPE_INT64", 3: "TYPE_INT8", 2: "TYPE_UINT8"}  # onnx elem_type


def _dims(value_info: Any) -> list[int]:  # an onnx ValueInfoProto
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim]


def _tensor(value_info: Any) -> str:
    kind = _TYPES[value_info.type.tensor_type.elem_type]
    dims = ", ".join(str(d) for d in _dims(value_info))
    return f'  {{\n    name: "{value_info.name}"\n    data_type: {kind}\n    dims: [ {dims} ]\n  }}'


def model_config(graph: str, path: Path, device: str = "gpu") -> str:
    """The config.pbtxt of one graph: its inputs and outputs as the ONNX file declares them."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in initializers]
    lines = [
        f'name: "{MODEL_PREFIX}{graph}"',
        'backend: "onnxruntime"',
        "max_batch_size: 0",
        "input [\n" + ",\n".join(_tensor(v) for v in inputs) + "\n]",
        "output [\n" + ",\n".join(_tensor(v) for v in proto.graph.output) + "\n]",
        f"instance_group [\n  {{\n    kind: {'KIND_GPU' if device == 'gpu' else 'KIND_CPU'}\n    count: 1\n  }}\n]",
    ]
    if device == "gpu":
        # TensorRT through ONNX Runtime's provider (FP16 engines), CUDA for what it does not take.
        lines.append(
            "optimization {\n  execution_accelerators {\n    gpu_execution_accelerator : [\n      {\n"
            '        name : "tensorrt"\n        parameters { key: "precision_mode" value: "FP16" }\n'
            '        parameters { key: "max_workspace_size_bytes" value: "2147483648" }\n'
            '        parameters { key: "trt_engine_cache_enable" value: "1" }\n      }\n    ]\n  }\n}'
        )
    return "\n".join(lines) + "\n"


def write_repository(graphs: GraphSet, folder: Path, device: str = "gpu") -> list[Path]:
    """Write the model repository into ``folder`` (one model per graph, version 1); returns the config paths."""
    if device not in ("gpu", "cpu"):
        raise ValueError(f"device is gpu or cpu, not {device!r}")
    written = []
    for graph in GRAPHS:
        model_dir = folder / f"{MODEL_PREFIX}{graph}"
        (model_dir / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(graphs.path(graph), model_dir / "1" / "model.onnx")
        config = model_dir / "config.pbtxt"
        config.write_text(model_config(graph, graphs.path(graph), device))
        written.append(config)
    return written
