"""Backends loaded on the CPU in float32 from a given network (what the contract compares)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from model import StyA2K
from service.backends import GRAPH_BACKENDS, make_graph_backend
from service.backends.base import InferenceBackend
from service.backends.pytorch import TorchBackend


@pytest.fixture(scope="session")
def backend_factory(request: pytest.FixtureRequest) -> Callable[[str, StyA2K], InferenceBackend]:
    """name, network -> that backend loaded with it (graph backends: the session's exported graphs, never a new
    export: the network must be the seeded one; -int8: the session's int8 graphs)."""
    def make(name: str, net: StyA2K) -> InferenceBackend:
        backend: InferenceBackend
        if name == "torch":
            backend = TorchBackend()
        elif name in GRAPH_BACKENDS:
            from model.checkpoint import sha256_file

            cache = request.getfixturevalue("graph_cache")
            if name.endswith("-int8"):
                request.getfixturevalue("int8_graphs")  # quantized once per session
            digest = sha256_file(request.getfixturevalue("seeded_weights"))
            backend = make_graph_backend(name, cache, digest, threads=1, export=False)
        else:
            raise ValueError(f"no factory for backend {name!r}")
        backend.load(net, torch.device("cpu"), None)
        return backend

    return make
