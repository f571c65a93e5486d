"""LPIPS v0.1 AlexNet: properties on random weights, known answer on the shared weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from model.imageio import pil_to_tensor
from model.lpips import LPIPS, LpipsError

LPIPS_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "weights" / "lpips"


def _random_lpips() -> LPIPS:
    torch.manual_seed(0)
    metric = LPIPS()
    for conv in metric.net.convs:
        torch.nn.init.kaiming_normal_(conv.weight)
    for head in metric.heads:
        head.data.uniform_(0, 1)
    return metric


def test_identical_images_have_zero_distance_and_distance_is_symmetric() -> None:
    metric = _random_lpips()
    a, b = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    assert torch.allclose(metric(a, a), torch.zeros(2))
    assert torch.allclose(metric(a, b), metric(b, a))
    assert (metric(a, b) > 0).all()


def test_shape_mismatch_and_missing_weights_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="of one shape"):
        _random_lpips()(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 32, 32))
    with pytest.raises(LpipsError, match="lacks"):
        LPIPS.from_folder(tmp_path)


@pytest.mark.skipif(not LPIPS_DIR.is_dir(), reason="../shared/weights/lpips not available")
def test_known_answer_from_the_lpips_authors() -> None:
    metric = LPIPS.from_folder(LPIPS_DIR)

    def load(name: str) -> torch.Tensor:
        with Image.open(LPIPS_DIR / "known_answer" / name) as img:
            return pil_to_tensor(img.convert("RGB"))[None]

    ref = load("ex_ref.png")
    with torch.no_grad():
        assert round(float(metric(ref, load("ex_p0.png"))), 3) == 0.722
        assert round(float(metric(ref, load("ex_p1.png"))), 3) == 0.138
