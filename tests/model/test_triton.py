"""The Triton model repository (model/triton.py, `stya2k export-graph --triton`): one model per graph in Triton's
layout, and each config.pbtxt parsed by protobuf's own text-format parser against the fields of Triton's
ModelConfig (model_config.proto) that it uses, so a misspelt field, a wrong enum or broken syntax fails here
rather than in a Triton server (not installable here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from model.checkpoint import sha256_file
from model.graphs import GRAPHS, GraphSet
from service.backends.graph_backend import graph_folder

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install .[onnx])")
text_format = pytest.importorskip("google.protobuf.text_format", reason="protobuf is not installed")

# Triton's enums (model_config.proto: DataType, ModelInstanceGroup.Kind), values as declared there.
DATA_TYPES = ["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8",
              "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING",
              "TYPE_BF16"]
KINDS = ["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"]


def model_config_class() -> Any:
    """A message class with the ModelConfig fields the generated configs use (names, types and nesting as in
    Triton's model_config.proto; numbers too, though text format does not look at them)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="triton_subset.proto", package="inference", syntax="proto3")
    data_type = file.enum_type.add(name="DataType")
    for number, name in enumerate(DATA_TYPES):
        data_type.value.add(name=name, number=number)

    def message(name: str, fields: list[tuple[str, int, int, int, str]], parent: Any = None) -> Any:
        msg = (parent.nested_type if parent is not None else file.message_type).add(name=name)
        for field_name, number, kind, label, type_name in fields:
            msg.field.add(name=field_name, number=number, type=kind, label=label, type_name=type_name or None)
        return msg

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    tensor = [("name", 1, F.TYPE_STRING, opt, ""), ("data_type", 2, F.TYPE_ENUM, opt, ".inference.DataType"),
              ("dims", 4, F.TYPE_INT64, rep, "")]
    message("ModelInput", tensor)
    message("ModelOutput", tensor)
    group = message("ModelInstanceGroup", [("name", 1, F.TYPE_STRING, opt, ""),
                                           ("kind", 4, F.TYPE_ENUM, opt, ".inference.ModelInstanceGroup.Kind"),
                                           ("count", 2, F.TYPE_INT32, opt, ""), ("gpus", 3, F.TYPE_INT32, rep, "")])
    kind = group.enum_type.add(name="Kind")
    for number, name in enumerate(KINDS):
        kind.value.add(name=name, number=number)
    optimization = message("ModelOptimizationPolicy", [
        ("execution_accelerators", 7, F.TYPE_MESSAGE, opt, ".inference.ModelOptimizationPolicy.ExecutionAccelerators")])
    accelerators = message("ExecutionAccelerators", [
        ("gpu_execution_accelerator", 1, F.TYPE_MESSAGE, rep,
         ".inference.ModelOptimizationPolicy.ExecutionAccelerators.Accelerator"),
        ("cpu_execution_accelerator", 2, F.TYPE_MESSAGE, rep,
         ".inference.ModelOptimizationPolicy.ExecutionAccelerators.Accelerator")], optimization)
    accelerator = message("Accelerator", [
        ("name", 1, F.TYPE_STRING, opt, ""),
        ("parameters", 2, F.TYPE_MESSAGE, rep,
         ".inference.ModelOptimizationPolicy.ExecutionAccelerators.Accelerator.ParametersEntry")], accelerators)
    entry = message("ParametersEntry", [("key", 1, F.TYPE_STRING, opt, ""), ("value", 2, F.TYPE_STRING, opt, "")],
                    accelerator)
    entry.options.map_entry = True
    message("ModelConfig", [
        ("name", 1, F.TYPE_STRING, opt, ""), ("platform", 2, F.TYPE_STRING, opt, ""),
        ("backend", 17, F.TYPE_STRING, opt, ""), ("max_batch_size", 4, F.TYPE_INT32, opt, ""),
        ("input", 5, F.TYPE_MESSAGE, rep, ".inference.ModelInput"),
        ("output", 6, F.TYPE_MESSAGE, rep, ".inference.ModelOutput"),
        ("instance_group", 7, F.TYPE_MESSAGE, rep, ".inference.ModelInstanceGroup"),
        ("optimization", 12, F.TYPE_MESSAGE, opt, ".inference.ModelOptimizationPolicy"),
        ("default_model_filename", 8, F.TYPE_STRING, opt, "")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


@pytest.fixture(scope="module")
def graphs(graph_cache: Path, seeded_weights: Path) -> GraphSet:
    return GraphSet(graph_folder(graph_cache, sha256_file(seeded_weights)))


@pytest.mark.parametrize("device", ["gpu", "cpu"])
def test_the_repository_has_one_valid_model_per_graph(graphs: GraphSet, tmp_path: Path, device: str) -> None:
    from model.triton import write_repository

    configs = write_repository(graphs, tmp_path, device)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"stya2k_{g}" for g in GRAPHS)
    ModelConfig = model_config_class()
    for graph, path in zip(GRAPHS, configs, strict=True):
        model_dir = tmp_path / f"stya2k_{graph}"
        assert path == model_dir / "config.pbtxt"
        assert (model_dir / "1" / "model.onnx").read_bytes() == graphs.path(graph).read_bytes()
        config = text_format.Parse(path.read_text(), ModelConfig())  # raises on syntax or unknown fields
        proto = onnx.load(str(graphs.path(graph)))
        assert config.name == f"stya2k_{graph}" and config.backend == "onnxruntime" and config.max_batch_size == 0
        # Every graph input and output, by name, with the rank and fixed channel counts of the ONNX file.
        for declared, tensors in ((config.input, proto.graph.input), (config.output, proto.graph.output)):
            assert [t.name for t in declared] == [t.name for t in tensors]
            for ours, theirs in zip(declared, tensors, strict=True):
                dims = [d.dim_value or -1 for d in theirs.type.tensor_type.shape.dim]
                assert list(ours.dims) == dims and ours.dims[0] == -1  # the batch axis stays dynamic
                assert ours.data_type == DATA_TYPES.index("TYPE_FP32")
        (group,) = config.instance_group
        assert group.kind == KINDS.index("KIND_GPU" if device == "gpu" else "KIND_CPU") and group.count == 1
        accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
        assert [a.name for a in accelerators] == (["tensorrt"] if device == "gpu" else [])


def test_the_parser_catches_a_broken_config() -> None:
    """The check can fail: a misspelt field and a wrong enum are errors."""
    ModelConfig = model_config_class()
    with pytest.raises(text_format.ParseError):
        text_format.Parse('name: "x"\nbackend: "onnxruntime"\nmax_batch: 0\n', ModelConfig())
    with pytest.raises(text_format.ParseError):
        text_format.Parse('input [ { name: "a" data_type: FP32 dims: [ -1 ] } ]\n', ModelConfig())
