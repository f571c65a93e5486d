"""The exported graphs (model/graphs.py): valid ONNX with the weights' digest and config in their metadata, and
equal to the torch network (<= 1/255 max abs in float32) at several sizes through ONNX Runtime."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from model import StyA2K
from model.checkpoint import sha256_file
from model.graphs import GRAPH_FORMAT, GRAPHS, GraphSet, GraphStages, network_digest, read_metadata
from service.backends.onnx_runtime import graph_folder

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install .[onnx])")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install .[onnx])")


@pytest.fixture(scope="module")
def graphs(graph_cache: Path, seeded_weights: Path) -> GraphSet:
    return GraphSet(graph_folder(graph_cache, sha256_file(seeded_weights)))


@pytest.fixture(scope="module")
def stages(graphs: GraphSet) -> GraphStages:
    sessions = {g: ort.InferenceSession(str(graphs.path(g)), providers=["CPUExecutionProvider"]) for g in GRAPHS}
    metadata = read_metadata(graphs.path("encoder"))
    return GraphStages.from_metadata(lambda g, feeds: sessions[g].run(None, feeds), metadata)


def test_each_graph_passes_the_checker_and_carries_weights_and_config(
    graphs: GraphSet, seeded_network: Callable[[], StyA2K], seeded_weights: Path
) -> None:
    net = seeded_network()
    for graph in GRAPHS:
        onnx.checker.check_model(str(graphs.path(graph)), full_check=True)
        meta = read_metadata(graphs.path(graph))
        assert meta["graph"] == graph and meta["graph_format"] == str(GRAPH_FORMAT)
        assert meta["weights_sha256"] == sha256_file(seeded_weights)
        assert json.loads(meta["config"]) == net.config.to_dict()
        assert "dynamic" in meta["shapes"]


@pytest.mark.parametrize(
    ("content_size", "style_size"),
    [((64, 64), (64, 64)), ((96, 160), (128, 96)), ((72, 52), (70, 90))],
    ids=["square", "non_square", "off_grid"],
)
def test_graphs_equal_the_torch_network(
    stages: GraphStages, seeded_network: Callable[[], StyA2K], photo_like: Callable[..., torch.Tensor],
    content_size: tuple[int, int], style_size: tuple[int, int],
) -> None:
    net = seeded_network()
    content, style = photo_like(1, 1, *content_size), photo_like(2, 1, *style_size)
    with torch.inference_mode():
        want = net.stylize_from_features(content, [net.encode_style(style)], None, 0.9)
        got = stages.stylize_from_features(content, [stages.encode_style(style)], None, 0.9)
    assert got.shape == want.shape == (1, 3, *content_size)
    assert ((want > 0) & (want < 1)).float().mean() > 0.5  # not a clamped image: the comparison sees values
    diff = (got - want).abs().max().item()
    # The bound, and small next to the image's own range (random weights give a dim image, float32 gives ~1e-7)
    assert diff <= 1 / 255 and diff <= 1e-3 * (want.max() - want.min()).item()


def test_the_digest_of_unsaved_weights_follows_their_values(seeded_network: Callable[[], StyA2K]) -> None:
    net = seeded_network()
    before = network_digest(net)
    assert network_digest(seeded_network()) == before
    with torch.no_grad():
        net.merge.conv.bias.add_(1e-3)
    assert network_digest(net) != before


def test_an_ablation_is_refused(tmp_path: Path) -> None:
    from model import ModelConfig
    from model.graphs import export_graphs

    with pytest.raises(ValueError, match="adain"):
        export_graphs(StyA2K(ModelConfig(arch="adain")), tmp_path)
