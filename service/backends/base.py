"""The inference-backend interface: what the engine asks of a runtime, and what a runtime says it can do.

The engine (service/engine.py) keeps the serving policy: batch keys, padding to buckets, the style cache, crops,
colour preservation, tiling plans, out-of-memory mapping and /v1/info. A backend only runs the network: it loads
it on a device with a precision, encodes styles into features, runs one batch of transfers, and exposes the
feature-level network the tiled path (model.tiling) steps through. One module per runtime in this package.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from model import StyA2K, StyleFeatures
from model.tiling import FeatureNetwork


@dataclass(frozen=True)
class Capabilities:
    """What a backend supports, declared before it runs (the engine refuses the rest with a clear reason)."""

    dtypes: tuple[str, ...]  # precisions it can load with ("float32", "bfloat16", "float16")
    batching: bool  # more than one image per run
    tiling: bool  # whole-image content statistics (model.tiling), so large images tile exactly
    masks: bool  # per-pixel style weights (B, N, H, W)
    max_batch: int | None  # most images per run (None: no limit of its own)
    tolerance: float  # max abs difference from the torch float32 reference output in [0, 1] (float32 load)
    # mean abs difference bound as well (int8: a per-pixel bound alone is loose by nature); None: tolerance only
    mean_tolerance: float | None = None


class InferenceBackend(Protocol):
    """One runtime for the network. Every method but :attr:`capabilities` runs in the model thread."""

    name: str  # "torch", "onnxruntime", "onnxruntime-int8", "openvino", "openvino-int8"
    capabilities: Capabilities

    def load(self, net: StyA2K, device: torch.device, precision: torch.dtype | None) -> None:
        """Make ``net`` (loaded, eval, on the CPU) runnable on ``device``; ``precision`` None = float32."""
        ...

    def inference(self) -> AbstractContextManager[Any]:
        """The context every call runs in (inference mode, autocast)."""
        ...

    def encode_styles(self, images: torch.Tensor) -> StyleFeatures:
        """Style images (b, 3, Hs, Ws) in [0, 1] on the device -> their features (batch b, on the device)."""
        ...

    def run(
        self,
        content: torch.Tensor,
        styles: Sequence[StyleFeatures],
        weights: torch.Tensor | None,
        alpha: torch.Tensor | float,
    ) -> torch.Tensor:
        """One batch: content (B, 3, H, W) in [0, 1]; N styles of batch B; weights None (N == 1), (B, N) or
        (B, N, H, W); alpha float or (B,) -> (B, 3, H, W) in [0, 1] (``StyA2K.stylize_from_features``)."""
        ...

    @property
    def network(self) -> FeatureNetwork:
        """The feature-level network the tiled path steps through (encoder, then transfer with given stats)."""
        ...

    @property
    def tensor_device(self) -> torch.device:
        """Where the tensors handed to :meth:`run` live (the device for torch; the CPU for a runtime that moves
        them itself)."""
        ...

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """A CPU tensor where :meth:`run` wants it."""
        ...

    def to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        """A result on the CPU."""
        ...

    def synchronize(self) -> None:
        """Wait for queued device work (CUDA); nothing elsewhere."""
        ...

    def recover(self, exc: BaseException) -> bool:
        """After a failed warm-up: switch to a plainer mode (True: warm up again) or give up (False)."""
        ...

    def release_memory(self) -> None:
        """After an out-of-memory error: hand cached device memory back so a retry can use it."""
        ...

    def info(self) -> dict[str, Any]:
        """The backend's part of /v1/info ``runtime`` (provider, graphs, ...)."""
        ...

