"""Fixtures of more than one test package: a seeded random network and its exported ONNX graphs (exported once
per session: an export costs seconds per graph on a CPU), and photo-like generated images."""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from model import ModelConfig, StyA2K

ONNX_MISSING = [p for p in ("onnx", "onnxruntime") if importlib.util.find_spec(p) is None]
LPIPS_DIR = Path(__file__).resolve().parents[2] / "shared" / "weights" / "lpips"  # absent: no LPIPS record


@pytest.fixture(scope="session")
def net() -> StyA2K:
    """A random network (seed 0), eval mode, in torch's default layout: the model and training tests' subject."""
    torch.manual_seed(0)
    return StyA2K(ModelConfig()).eval()


@pytest.fixture(scope="session")
def seeded_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights file of one random network (seed 0), saved in float32 (a service can load it by path)."""
    from model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    net = StyA2K(ModelConfig()).eval()
    # Random decoders answer a dim, nearly flat image (a few levels of 255): rescale the last conv so outputs
    # span [0, 1] like a trained model's, or comparisons at 1/255 would see nothing.
    last = net.decoder.stage1[-1].conv
    with torch.no_grad():
        content, style = generate_photo_like(0, 1, 64, 64), generate_photo_like(1, 1, 64, 64)
        raw = net(content, style)  # (1, 3, 64, 64) unclamped
        scale = 0.25 / raw.std().clamp_min(1e-8)
        last.weight.mul_(scale)
        last.bias.mul_(scale).add_(0.5 - (raw.mean() * scale))
    path = tmp_path_factory.mktemp("weights") / "seeded.pt"
    save_checkpoint(net, path, half=False)
    return path


@pytest.fixture(scope="session")
def seeded_network(seeded_weights: Path) -> Callable[[], StyA2K]:
    """A fresh copy of the seeded network, float32, eval, in torch's default layout."""
    from model.checkpoint import load_model

    net = load_model(seeded_weights).requires_grad_(False)
    return lambda: copy.deepcopy(net)


@pytest.fixture(scope="session")
def graph_cache(tmp_path_factory: pytest.TempPathFactory, seeded_weights: Path) -> Path:
    """A cache folder (STYA2K_CACHE layout) holding the seeded weights' graphs, exported by `stya2k export-graph`."""
    if ONNX_MISSING:
        pytest.skip(f"exporting graphs needs {', '.join(ONNX_MISSING)} (pip install .[onnx])")
    from model.checkpoint import sha256_file
    from service.backends.onnx_runtime import graph_folder
    from service.cli import main

    cache = tmp_path_factory.mktemp("graph-cache")
    folder = graph_folder(cache, sha256_file(seeded_weights))
    assert main(["export-graph", "--weights", str(seeded_weights), "--out", str(folder)]) == 0
    return cache


@pytest.fixture(scope="session")
def int8_graphs(graph_cache: Path, seeded_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seeded weights' int8 graph folder (inside graph_cache), quantized by `stya2k export-graph --int8` on
    generated calibration images (content/ and style/, 96 px), with LPIPS in its quality record when ../shared has
    the LPIPS weights."""
    from PIL import Image

    from model.checkpoint import sha256_file
    from service.backends.graph_backend import graph_folder, newest_int8
    from service.cli import main

    calibration = tmp_path_factory.mktemp("calibration")
    for kind, seed in (("content", 100), ("style", 200)):
        (calibration / kind).mkdir()
        for index in range(6):
            image = generate_photo_like(seed + index, 1, 72 + 8 * index, 96)[0]  # (3, H, W)
            array = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
            Image.fromarray(array).save(calibration / kind / f"{index}.png")
    folder = graph_folder(graph_cache, sha256_file(seeded_weights))
    assert main(["export-graph", "--weights", str(seeded_weights), "--out", str(folder), "--int8", "--calibration",
                 str(calibration), "--calibration-count", "8", "--calibration-side", "96", "--lpips",
                 str(LPIPS_DIR)]) == 0
    found = newest_int8(folder)
    assert found is not None
    return found.folder


@pytest.fixture(scope="session")
def photo_like() -> Callable[[int, int, int, int], torch.Tensor]:
    return generate_photo_like


def generate_photo_like(seed: int, batch: int, height: int, width: int) -> torch.Tensor:
    """(batch, 3, H, W) in [0, 1]: smooth colour fields, a few hard-edged discs and fine grain, like a photo
    more than like white noise (attention and the decoder see edges, flat regions and texture)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, max(2, height // 24), max(2, width // 24), generator=generator)
    image = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    ys = torch.arange(height).view(-1, 1).float()
    xs = torch.arange(width).view(1, -1).float()
    for _ in range(3):
        cy, cx, r = (torch.rand(3, generator=generator) * torch.tensor([height, width, min(height, width) / 3]))
        disc = ((ys - cy) ** 2 + (xs - cx) ** 2 <= (r + 2) ** 2).float()  # (H, W)
        colour = torch.rand(batch, 3, 1, 1, generator=generator)
        image = image * (1 - disc) + colour * disc
    grain = torch.rand(batch, 3, height, width, generator=generator) - 0.5
    return (image + 0.08 * grain).clamp(0, 1)


# ---------------------------------------------------------------------------------------------- suite time
# Where the suite's minutes go, per test module (setup + call + teardown), printed after every run beside
# --durations' slowest tests: the README's suite-time figure and any trimming start from it.
_MODULE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    module = report.nodeid.split("::", 1)[0]
    _MODULE_SECONDS[module] = _MODULE_SECONDS.get(module, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if len(_MODULE_SECONDS) < 2:
        return
    total = sum(_MODULE_SECONDS.values())
    ranked = sorted(_MODULE_SECONDS.items(), key=lambda item: item[1], reverse=True)
    terminalreporter.write_sep("=", f"time per test module (top 15 of {len(ranked)}, {total / 60:.1f} min in tests)")
    for module, seconds in ranked[:15]:
        terminalreporter.write_line(f"{seconds:8.1f}s {100 * seconds / total:5.1f}%  {module}")
