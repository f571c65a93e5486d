"""The Python client, re-exported: it lives in the ``stya2k_client`` package (one copy), which installs alone
without torch (``pip install ./clients/python``) and is part of this distribution too. ``from service.client
import Client`` keeps working; new code may import ``stya2k_client`` directly."""

from stya2k_client.client import *  # noqa: F403
from stya2k_client.client import (  # the helpers callers used before the move, beyond __all__
    OUTPUT_FORMATS,
    STYLE_FITS,
    VIDEO_FORMAT,
    ImageInput,
    StyleInput,
    VideoInput,
    read_image,
    read_video,
)
from stya2k_client.client import __all__ as _client_all

__all__ = [*_client_all, "OUTPUT_FORMATS", "STYLE_FITS", "VIDEO_FORMAT", "ImageInput", "StyleInput", "VideoInput",
           "read_image", "read_video"]  # fmt: skip
