"""The PyTorch backend: the network itself, NHWC, autocast, optional torch.compile, pinned host memory on CUDA.

What the engine ran before the backends were split out (issue 29), unchanged in its arithmetic.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from model import StyA2K, StyleFeatures
from service.backends.base import Capabilities

log = logging.getLogger("service.backends.pytorch")

# Batches fill a GPU (the engine's AUTO_BATCH chooses per device); torch itself sets no limit. Tolerance: the same
# network, but NHWC kernels sum in another order than the NCHW reference (measured up to 4e-6 on [0, 1] outputs).
CAPABILITIES = Capabilities(
    dtypes=("float32", "bfloat16", "float16"), batching=True, tiling=True, masks=True, max_batch=None, tolerance=2e-5
)


class TorchBackend:
    name = "torch"
    capabilities = CAPABILITIES

    def __init__(self, compile: bool = False) -> None:
        self.compile = compile
        self.net: StyA2K | None = None
        self.device = torch.device("cpu")
        self.autocast_dtype: torch.dtype | None = None
        self._stylize: Callable[..., torch.Tensor] | None = None

    def load(self, net: StyA2K, device: torch.device, precision: torch.dtype | None) -> None:
        self.device, self.autocast_dtype = device, precision
        net = net.to(device)
        # NHWC on every device: oneDNN (CPU) and cuDNN skip per-layer layout reorders. CPU, 512 px, 2 threads:
        # 1.08-1.24x in 3 of 3 in-process pairs; output within 1 level of 255, LPIPS 7e-9 (docs/BENCHMARKS.md).
        self.net = net.to(memory_format=torch.channels_last)
        self._stylize = self.net.stylize_from_features
        if self.compile:
            self._stylize = torch.compile(self.net.stylize_from_features, dynamic=False)

    @property
    def network(self) -> StyA2K:
        if self.net is None:
            raise RuntimeError("the model is not loaded yet (Engine.load)")
        return self.net

    @property
    def tensor_device(self) -> torch.device:
        return self.device

    @property
    def stylize(self) -> Callable[..., torch.Tensor]:
        """The network's ``stylize_from_features`` (encode, transfer, mix, decode), compiled when STYA2K_COMPILE
        is on. (Not ``transfer``: that names the network's A2K stage alone.)"""
        if self._stylize is None:
            raise RuntimeError("the model is not loaded yet (Engine.load)")
        return self._stylize

    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        with torch.inference_mode():
            if self.autocast_dtype is None:
                yield
            else:
                with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                    yield

    def encode_styles(self, images: torch.Tensor) -> StyleFeatures:
        return self.network.encode_style(images)

    def run(
        self,
        content: torch.Tensor,
        styles: Sequence[StyleFeatures],
        weights: torch.Tensor | None,
        alpha: torch.Tensor | float,
    ) -> torch.Tensor:
        return self.stylize(content.contiguous(memory_format=torch.channels_last), styles, weights, alpha)

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return tensor
        pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        pinned.copy_(tensor)
        return pinned.to(self.device, non_blocking=True)

    def to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return tensor
        pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        pinned.copy_(tensor, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return pinned

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def recover(self, exc: BaseException) -> bool:
        """A compiled network that failed its warm-up falls back to eager mode once; eager failures are real."""
        if self._stylize == self.network.stylize_from_features:  # bound methods: a new object per access
            return False
        log.warning("torch.compile failed during warm-up (%s); falling back to eager mode", exc)
        self._stylize = self.network.stylize_from_features
        return True

    def release_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def info(self) -> dict[str, Any]:
        return {"provider": f"torch {torch.__version__} ({self.device.type})", "compile": self.compile,
                "channels_last": True}
