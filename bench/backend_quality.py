"""The quality harness (training/evaluate.py: content, style, texture, LPIPS, retrieval, spread) run through the
inference backends (issue 29), so an int8 graph's cost is read in the same columns as a training change.

Each backend stylizes every pair as the service would (its own encoder, transfer and decoder graphs; the glue in
torch), and the harness's VGG scores the outputs. ``torch`` is the weights file itself (the harness's usual row).
Graph backends read the graph cache (``stya2k export-graph``, ``--int8 --calibration DIR``) and never export.

    python -m bench.backend_quality --backends torch,onnxruntime-int8,openvino-int8 --n-content 8 --n-style 8 \
        --size 256 --out bench/results/backend-quality.json

Prints the markdown table and writes the JSON (rows as training.evaluate writes them).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench import common
from model.checkpoint import default_cache_dir, default_weights_path, load_model, sha256_file
from service.backends import BACKENDS, GRAPH_BACKENDS, make_graph_backend
from service.backends.base import InferenceBackend
from training.evaluate import EvalConfig, Harness, markdown_table

log = logging.getLogger(__name__)


class BackendNetwork(torch.nn.Module):
    """What the harness calls (``stylize``, ``meta``, ``config``) over a loaded backend."""

    def __init__(self, backend: InferenceBackend, net: torch.nn.Module, name: str) -> None:
        super().__init__()
        self.backend = backend
        self.meta = {**net.meta, "backend": name}
        self.config = net.config

    def stylize(self, content: Tensor, style: Tensor) -> Tensor:
        """(1, 3, H, W) content and style in [0, 1] -> (1, 3, H, W) in [0, 1], as the service computes it."""
        with self.backend.inference():
            features = self.backend.encode_styles(self.backend.to_device(style))
            out = self.backend.run(self.backend.to_device(content), [features], None, 1.0)
            return self.backend.to_host(out).float()


def load(name: str, weights: Path, threads: int) -> torch.nn.Module:
    net = load_model(weights).eval()
    if name == "torch":
        return net
    backend = make_graph_backend(name, default_cache_dir(), sha256_file(weights), threads, export=False)
    backend.load(net, torch.device("cpu"), None)  # FileNotFoundError: not exported / quantized yet
    return BackendNetwork(backend, net, name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = EvalConfig(weights=())
    parser.add_argument("--backends", default="torch,onnxruntime-int8,openvino-int8")
    parser.add_argument("--weights", type=Path, default=None, help="weights file (default: the shipped weights)")
    parser.add_argument("--content-dir", default=defaults.content_dir)
    parser.add_argument("--style-dir", default=defaults.style_dir)
    parser.add_argument("--n-content", type=int, default=8)
    parser.add_argument("--n-style", type=int, default=8)
    parser.add_argument("--size", type=int, default=256, help="content short side (px)")
    parser.add_argument("--style-size", type=int, default=None)
    parser.add_argument("--lpips-dir", default=defaults.lpips_dir)
    parser.add_argument("--threads", type=int, default=0, help="torch and runtime threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    args.backends = common.parse_choice_list(args.backends, BACKENDS, "backend")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    weights = args.weights or default_weights_path()
    cfg = EvalConfig(weights=tuple(args.backends), content_dir=args.content_dir, style_dir=args.style_dir,
                     n_content=args.n_content, n_style=args.n_style, size=args.size, style_size=args.style_size,
                     lpips_dir=args.lpips_dir)  # fmt: skip
    harness = Harness(cfg)
    rows: list[dict[str, Any]] = []
    for name in args.backends:
        net = load(name, weights, args.threads)
        log.info("%s: %d pairs", name, len(harness.contents) * len(harness.styles))
        row = harness.evaluate(net, f"{weights.name} ({name})")
        row["backend"] = name
        rows.append(row)
    result = {
        "machine": common.machine_info(torch.device("cpu")), "git": common.git_revision(),
        "graph_backends": [n for n in args.backends if n in GRAPH_BACKENDS], "config": asdict(cfg), "results": rows,
    }  # fmt: skip
    if args.out:
        common.write_json(args.out, json.loads(json.dumps(result, default=str)))
    sys.stdout.write(markdown_table(rows, cfg))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
