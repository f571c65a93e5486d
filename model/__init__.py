"""StyA2K: arbitrary style transfer with All-to-Key attention (Zhu et al., ICCV 2023)."""

from model.checkpoint import CheckpointError, default_weights_path, load_model
from model.config import AttentionConfig, ModelConfig
from model.encoder import TAP_NAMES, TAPS, EncoderWeightsError, VGGEncoder
from model.stya2k import StyA2K, StyleFeatures

__all__ = [
    "TAPS",
    "TAP_NAMES",
    "AttentionConfig",
    "CheckpointError",
    "EncoderWeightsError",
    "ModelConfig",
    "StyA2K",
    "StyleFeatures",
    "VGGEncoder",
    "default_weights_path",
    "load_model",
]


def __getattr__(name: str) -> object:
    # DEFAULT_WEIGHTS is resolved lazily: importing the package must work before any weights are shipped.
    if name == "DEFAULT_WEIGHTS":
        return default_weights_path()
    raise AttributeError(name)
