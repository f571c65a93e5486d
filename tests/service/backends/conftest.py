"""Backends loaded on the CPU in float32 from a given network (what the contract compares)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from model import StyA2K
from service.backends.base import InferenceBackend
from service.backends.pytorch import TorchBackend


@pytest.fixture(scope="session")
def backend_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, StyA2K], InferenceBackend]:
    def make(name: str, net: StyA2K) -> InferenceBackend:
        backend: InferenceBackend
        if name == "torch":
            backend = TorchBackend()
        else:
            raise ValueError(name)
        backend.load(net, torch.device("cpu"), None)
        return backend

    return make
