"""The trained network as ONNX graphs (what other runtimes take: ONNX Runtime, TensorRT, OpenVINO, Triton).

Three graphs, not one, so everything the service does around the network keeps working on any runtime:

- ``encoder``: a padded image (B, 3, H, W) -> the VGG features at relu3_1, relu4_1, relu5_1. Runs for contents
  and for styles, so encoded styles are cached once (the style cache) whichever runtime made them.
- ``transfer``: A2K at the three layers for one style: content and style features, each padded to its layer's
  block grid, with the per-channel (mean, std) of the content and of the style -> the transferred features.
  Interpolation and masks mix these per style outside the graph (``model.stya2k.stylize_stages``); tiling passes
  whole-image content statistics instead of the tile's own (``model.tiling``).
- ``decoder``: the (mixed) features of the three layers -> the unclamped image.

Sizes are dynamic (batch, height, width of every input), not per-shape buckets: an export costs seconds to tens
of seconds per graph on a CPU, and a service sees many content x style shapes. What makes one graph valid for
every size: A2K pads its maps to the block grid (8, 8, 4 positions at relu3_1/4_1/5_1: 32 / 64 / 64 px) with a
rule that depends on the size (none, reflect, or replicate when a map is smaller than its pad), and a traced
graph would freeze the rule of the size it was exported at. So :class:`GraphStages` pads the features *before*
the graph (``model.functional.pad_to_multiple``, the same rule) and passes the statistics of the unpadded maps:
normalisation, the 1x1 projections and the residual are per position, so padding first then projecting equals
projecting then padding, and the graph only ever sees maps already on the grid. Outputs are cropped back.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from model import functional as fn
from model.config import ATTENTION_TAPS
from model.stya2k import StyA2K, StyleFeatures, pad_image, stylize_stages

GRAPHS: tuple[str, ...] = ("encoder", "transfer", "decoder")
OPSET = 18
# Bump when the graphs' inputs, outputs or meaning change: part of every cache key and of the metadata.
GRAPH_FORMAT = 1
META = "stya2k."  # prefix of our metadata_props keys
# The size the graphs are traced at: every layer's map on its block grid (relu5_1: 4 x 4 = one 4-block).
_EXPORT_SIDE = 64


def network_digest(net: StyA2K) -> str:
    """sha256 of the network's tensors and config: the cache key of weights that have no file (random weights)."""
    digest = hashlib.sha256(json.dumps(net.config.to_dict(), sort_keys=True).encode())
    for name, tensor in net.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- the graphs
class _Encoder(nn.Module):
    def __init__(self, net: StyA2K) -> None:
        super().__init__()
        self.encoder, self.taps = net.encoder, net.taps

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        feats = self.encoder(image, self.taps)
        return tuple(feats[tap] for tap in self.taps)


class _Transfer(nn.Module):
    """A2K at each layer with given statistics; inputs flat, six per tap (see :func:`transfer_inputs`)."""

    def __init__(self, net: StyA2K) -> None:
        super().__init__()
        self.layers = nn.ModuleList([net.attn3, net.attn4, net.attn5])

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        out = []
        for index, layer in enumerate(self.layers):
            content, style, c_mean, c_std, s_mean, s_std = inputs[6 * index : 6 * index + 6]
            out.append(layer(content, style, (c_mean, c_std), (s_mean, s_std)))
        return tuple(out)


class _Decoder(nn.Module):
    def __init__(self, net: StyA2K) -> None:
        super().__init__()
        self.net = net

    def forward(self, *feats: Tensor) -> Tensor:
        return self.net.decode(dict(zip(self.net.taps, feats, strict=True)))


def transfer_inputs(taps: Sequence[str] = ATTENTION_TAPS) -> list[str]:
    return [f"{kind}_{tap}" for tap in taps
            for kind in ("content", "style", "content_mean", "content_std", "style_mean", "style_std")]


def _axes(name: str, spatial: bool) -> dict[int, str]:
    return {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} if spatial else {0: "batch"}


@dataclass(frozen=True)
class GraphSet:
    """The three graph files of one network."""

    folder: Path

    def path(self, graph: str) -> Path:
        return self.folder / f"{graph}.onnx"

    def complete(self) -> bool:
        return all(self.path(graph).is_file() for graph in GRAPHS)


def export_graphs(net: StyA2K, folder: Path, weights_sha256: str | None = None, opset: int = OPSET) -> GraphSet:
    """Write encoder.onnx, transfer.onnx and decoder.onnx of ``net`` (eval, float32, on the CPU) into ``folder``.

    ``weights_sha256``: the weights file's digest, recorded in each file's metadata with the config (default: the
    digest of the network's tensors). Each file is checked (``onnx.checker``) and moved into place atomically, so a
    concurrent reader never sees half a graph.
    """
    import onnx  # the optional `onnx` extra; the package imports without it

    if net.config.arch != "a2k":
        raise ValueError(f"export-graph exports the a2k network; these weights are the {net.config.arch!r} ablation")
    if next(net.parameters()).device.type != "cpu":
        net = copy.deepcopy(net).to("cpu")  # the caller's network stays where it serves
    net = net.eval().requires_grad_(False)
    folder.mkdir(parents=True, exist_ok=True)
    taps = net.taps
    side = _EXPORT_SIDE
    image = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = net.encoder(image, taps)
    stats = {tap: fn.calc_mean_std(feats[tap]) for tap in taps}
    transfer_args = tuple(t for tap in taps for t in (feats[tap], feats[tap], *stats[tap], *stats[tap]))
    names = transfer_inputs(taps)
    metadata = {
        "graph_format": str(GRAPH_FORMAT),
        "weights_sha256": weights_sha256 or network_digest(net),
        "config": json.dumps(net.config.to_dict(), sort_keys=True),
        "taps": json.dumps(list(taps)),
        "block_sizes": json.dumps([net.config.attention.block_sizes[tap] for tap in taps]),
        "shapes": "dynamic (batch, height, width); transfer inputs padded to each layer's block grid",
        "exporter": f"torch {torch.__version__} (TorchScript exporter), opset {opset}",
    }
    specs: dict[str, tuple[nn.Module, tuple[Tensor, ...], list[str], list[str], dict[str, dict[int, str]]]] = {
        "encoder": (_Encoder(net), (image,), ["image"], list(taps),
                    {"image": _axes("image", True), **{tap: _axes(tap, True) for tap in taps}}),
        "transfer": (_Transfer(net), transfer_args, names, [f"transferred_{tap}" for tap in taps],
                     {**{n: _axes(n, n.startswith(("content_relu", "style_relu"))) for n in names},
                      **{f"transferred_{tap}": _axes(f"content_{tap}", True) for tap in taps}}),
        "decoder": (_Decoder(net), tuple(feats[tap] for tap in taps), list(taps), ["image"],
                    {**{tap: _axes(tap, True) for tap in taps}, "image": _axes("image", True)}),
    }
    graphs = GraphSet(folder)
    for graph, (module, args, inputs, outputs, axes) in specs.items():
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            # The tracer names each size-dependent branch it freezes: the block-grid padding (a no-op here, the
            # inputs come padded) and the head width check (constant). The TorchScript exporter is the one whose
            # graphs the issue measured; its deprecation notice is not news to the caller.
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")  # strided slices stay
            torch.onnx.export(module, args, buffer, dynamo=False, opset_version=opset, input_names=inputs,
                              output_names=outputs, dynamic_axes=axes, do_constant_folding=True)
        proto = onnx.load_from_string(buffer.getvalue())
        for key, value in {**metadata, "graph": graph}.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = META + key, value
        proto.doc_string = f"StyA2K {graph} ({__name__}); metadata_props {META}*"
        onnx.checker.check_model(proto, full_check=True)
        _write_atomically(graphs.path(graph), proto.SerializeToString())
    return graphs


def _write_atomically(path: Path, data: bytes) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def read_metadata(path: Path) -> dict[str, str]:
    """A graph file's ``stya2k.*`` metadata_props, without the prefix."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key.removeprefix(META): p.value for p in proto.metadata_props if p.key.startswith(META)}


# ---------------------------------------------------------------------------------------------- running them
GraphRunner = Callable[[str, dict[str, np.ndarray]], Sequence[np.ndarray]]  # (graph, feeds) -> outputs in order


def _array(tensor: Tensor) -> np.ndarray:
    return tensor.detach().float().contiguous().numpy()


class GraphStages:
    """The network's stages over the three graphs (``run`` executes one graph: ONNX Runtime, OpenVINO, ...).

    Satisfies ``model.stya2k.Stages`` and ``model.tiling.FeatureNetwork``: the service mixes styles, blends alpha
    and tiles with the same code as the torch network. Tensors in and out are float32 on the CPU.
    """

    def __init__(self, run: GraphRunner, taps: Sequence[str], block_sizes: Sequence[int]) -> None:
        self.run_graph = run
        self.taps = tuple(taps)
        self.block_sizes = dict(zip(self.taps, block_sizes, strict=True))

    @classmethod
    def from_metadata(cls, run: GraphRunner, metadata: dict[str, str]) -> GraphStages:
        return cls(run, json.loads(metadata["taps"]), json.loads(metadata["block_sizes"]))

    def encoder(self, x: Tensor, taps: Sequence[str] = ATTENTION_TAPS) -> dict[str, Tensor]:
        if tuple(taps) != self.taps:
            raise ValueError(f"the encoder graph computes {self.taps}, not {tuple(taps)}")
        outputs = self.run_graph("encoder", {"image": _array(x)})
        return {tap: torch.from_numpy(out) for tap, out in zip(self.taps, outputs, strict=True)}

    def encode_style(self, style: Tensor) -> StyleFeatures:
        """As ``StyA2K.encode_style``: (B, 3, Hs, Ws) in [0, 1], any size -> the style features."""
        return StyleFeatures(self.encoder(pad_image(style)[0], self.taps))

    def transfer(self, content_feats: dict[str, Tensor], style_feats: dict[str, Tensor],
                 content_stats: dict[str, fn.Stats] | None = None) -> dict[str, Tensor]:
        """As ``StyA2K.transfer``: the maps padded to the block grid here, their statistics taken unpadded."""
        feeds: dict[str, np.ndarray] = {}
        sizes = {}
        for tap in self.taps:
            content, style = content_feats[tap].float(), style_feats[tap].float()
            c_mean, c_std = (content_stats or {}).get(tap) or fn.calc_mean_std(content)
            s_mean, s_std = fn.calc_mean_std(style)
            block = self.block_sizes[tap]
            padded_content, sizes[tap] = fn.pad_to_multiple(content, block)
            padded_style, _ = fn.pad_to_multiple(style, block)
            for kind, value in (("content", padded_content), ("style", padded_style), ("content_mean", c_mean),
                                ("content_std", c_std), ("style_mean", s_mean), ("style_std", s_std)):
                feeds[f"{kind}_{tap}"] = _array(value)
        outputs = self.run_graph("transfer", feeds)
        return {tap: torch.from_numpy(out)[..., : sizes[tap][0], : sizes[tap][1]]
                for tap, out in zip(self.taps, outputs, strict=True)}

    def decode(self, transferred: dict[str, Tensor]) -> Tensor:
        (image,) = self.run_graph("decoder", {tap: _array(transferred[tap]) for tap in self.taps})
        return torch.from_numpy(image)

    def stylize_from_features(self, content: Tensor, styles: Sequence[StyleFeatures], weights: Tensor | None = None,
                              alpha: float | Tensor = 1.0,
                              content_stats: dict[str, fn.Stats] | None = None) -> Tensor:
        return stylize_stages(self, content.float(), styles, weights, alpha, content_stats)


def describe(graphs: GraphSet) -> dict[str, Any]:
    """Each graph's file size and metadata (what ``stya2k export-graph`` prints)."""
    return {graph: {"path": str(graphs.path(graph)), "bytes": graphs.path(graph).stat().st_size,
                    **read_metadata(graphs.path(graph))} for graph in GRAPHS}
