"""The service with the shipped default weights (skipped until a weights file is in weights/)."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image
from service_helpers import image_bytes, start_server

import model
from service import imaging


def _shipped_weights_present() -> bool:
    try:
        return model.DEFAULT_WEIGHTS.is_file()
    except model.CheckpointError:
        return False


pytestmark = pytest.mark.skipif(not _shipped_weights_present(), reason="no shipped weights in weights/ yet")


def test_shipped_weights_serve_a_real_stylization() -> None:
    running = start_server(weights=None, max_side=128, default_side=128, style_size=128)
    try:
        with running.client() as client:
            info = client.get("/v1/info").json()["model"]
            assert info["sha256"] and len(info["sha256"]) == 64 and info["weights"].endswith(".pt")
            content = image_bytes((128, 96), "PNG", color=(40, 120, 200))
            style = image_bytes((128, 128), "PNG", color=(230, 180, 30))
            files = {"content": content, "style": style}
            full = client.post("/v1/stylize", files=files, data={"alpha": "1"})
            none = client.post("/v1/stylize", files=files, data={"alpha": "0"})
        assert full.status_code == none.status_code == 200, full.text
        stylized = imaging.to_tensor(Image.open(io.BytesIO(full.content)))
        reconstructed = imaging.to_tensor(Image.open(io.BytesIO(none.content)))
        assert stylized.shape == (3, 96, 128)
        assert stylized.std() > 0.01  # a trained decoder draws an image, not a flat field
        assert (stylized - reconstructed).abs().mean() > 0.01  # alpha reaches the model
        assert torch.isfinite(stylized).all()
    finally:
        running.stop()
