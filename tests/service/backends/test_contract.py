"""The contract every inference backend keeps: the torch float32 reference's output within the backend's declared
tolerance, for every kind of batch the engine sends (stylize, interpolate, masks, alpha, off-grid sizes, batch > 1)
and for the tiled path (whole-image statistics). Parametrised over every backend this environment can run."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from model import StyA2K, StyleFeatures
from model.tiling import TileConfig, TiledStylizer
from service.backends import BACKENDS, available_backends, missing_packages
from service.backends.base import InferenceBackend

PARAMS = [
    pytest.param(name, marks=pytest.mark.skipif(
        bool(missing_packages(name)), reason=f"{name} backend needs {', '.join(missing_packages(name))}"))
    for name in BACKENDS
]  # fmt: skip


@pytest.fixture(scope="module")
def reference(seeded_network: Callable[[], StyA2K]) -> StyA2K:
    """Random weights (seeded): a float32 network in torch's default layout, never handed to a backend."""
    return seeded_network()


@pytest.fixture(scope="module", params=PARAMS)
def backend(
    request: pytest.FixtureRequest, seeded_network: Callable[[], StyA2K],
    backend_factory: Callable[[str, StyA2K], InferenceBackend],
) -> InferenceBackend:
    return backend_factory(request.param, seeded_network())


def images(seed: int, batch: int, height: int, width: int) -> torch.Tensor:
    """Smooth random images (low-frequency noise, upsampled): closer to photos than white noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, max(2, height // 16), max(2, width // 16), generator=generator)
    fine = torch.rand(batch, 3, height, width, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return (0.85 * smooth + 0.15 * fine).clamp(0, 1)


def expected(reference: StyA2K, content: torch.Tensor, styles: list[torch.Tensor], weights: torch.Tensor | None,
             alpha: torch.Tensor | float) -> torch.Tensor:
    with torch.inference_mode():
        features = [reference.encode_style(style) for style in styles]
        return reference.stylize_from_features(content, features, weights, alpha)


def served(backend: InferenceBackend, content: torch.Tensor, styles: list[torch.Tensor],
           weights: torch.Tensor | None, alpha: torch.Tensor | float) -> torch.Tensor:
    with backend.inference():
        features = [backend.encode_styles(backend.to_device(style)) for style in styles]
        out = backend.run(backend.to_device(content), features, weights, alpha)
        return backend.to_host(out).float()


def assert_close(backend: InferenceBackend, got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    # Not a clamped image: the comparison must see real values (random weights could clamp everything).
    unclamped = ((want > 0) & (want < 1)).float().mean().item()
    assert unclamped > 0.5, f"reference output is clamped ({unclamped:.0%} inside (0, 1))"
    diff = (got - want).abs()
    # Random weights give a dim image: the tolerance counts relative to its range as well.
    scale = min(1.0, (want.max() - want.min()).item() * 10)
    bound = backend.capabilities.tolerance * scale
    assert diff.max().item() <= bound, f"{backend.name}: max abs {diff.max().item():.2e} > {bound:.2e}"
    mean_bound = backend.capabilities.mean_tolerance
    if mean_bound is not None:
        assert diff.mean().item() <= mean_bound * scale, f"{backend.name}: mean abs {diff.mean().item():.2e}"
    if "int8" not in backend.capabilities.dtypes:  # float32 everywhere: the same image, not just a close one
        assert diff.mean().item() <= 1e-4


CASES = {
    # name: (batch, content (H, W), style sizes, weights kind, alpha)
    "stylize": (1, (64, 64), [(64, 64)], None, 1.0),
    "off_grid": (1, (80, 48), [(100, 70)], None, 1.0),
    "non_square_batch": (2, (96, 160), [(64, 64)], None, 1.0),
    "alpha_per_image": (2, (64, 96), [(64, 64)], None, "per_image"),
    "interpolate": (2, (64, 80), [(64, 64), (64, 64)], "interpolate", 1.0),
    "masks": (2, (80, 64), [(64, 64), (96, 64)], "masks", 0.8),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_backend_matches_the_torch_reference(backend: InferenceBackend, reference: StyA2K, case: str) -> None:
    batch, (height, width), style_sizes, kind, alpha_kind = CASES[case]
    content = images(1, batch, height, width)
    styles = [images(10 + n, batch, hs, ws) for n, (hs, ws) in enumerate(style_sizes)]
    weights = None
    if kind == "interpolate":
        weights = torch.tensor([[0.3, 0.7], [0.9, 0.1]])[:batch]  # (B, N)
    elif kind == "masks":
        left = (torch.arange(width) < width // 2).float().expand(height, width)  # (H, W)
        weights = torch.stack([left, 1 - left])[None].repeat(batch, 1, 1, 1)  # (B, 2, H, W)
    alpha = torch.tensor([1.0, 0.4])[:batch] if alpha_kind == "per_image" else alpha_kind
    if batch > 1 and not backend.capabilities.batching:
        pytest.skip(f"{backend.name} declares no batching")
    if kind == "masks" and not backend.capabilities.masks:
        pytest.skip(f"{backend.name} declares no masks")
    assert_close(backend, served(backend, content, styles, weights, alpha),
                 expected(reference, content, styles, weights, alpha))


def test_tiled_transfer_matches_the_torch_reference(backend: InferenceBackend, reference: StyA2K) -> None:
    if not backend.capabilities.tiling:
        pytest.skip(f"{backend.name} declares no tiling")
    content, style = images(3, 1, 160, 200), images(4, 1, 64, 64)
    cfg = TileConfig(tile=64, margin=64, blend=16)

    def tiled(network, features: StyleFeatures, context) -> torch.Tensor:
        return TiledStylizer(network, content, [features], None, 0.9, cfg, torch.device("cpu"), context).run()

    with torch.inference_mode():
        want = tiled(reference, reference.encode_style(style), torch.inference_mode)
    with backend.inference():
        features = backend.encode_styles(style)
    got = tiled(backend.network, features, backend.inference)
    assert_close(backend, got, want)


def test_the_output_does_not_depend_on_the_sizes_run_before(backend: InferenceBackend, reference: StyA2K) -> None:
    """Small first, as the engine's warm-up does, then larger and back: each output as torch's. (OpenVINO's
    shape-keyed primitive cache answered the 256 px run after a 64 px one wrongly until it was turned off.)"""
    for side in (64, 256):
        content, style = images(20 + side, 1, side, side), images(21 + side, 1, side, side)
        assert_close(backend, served(backend, content, [style], None, 1.0),
                     expected(reference, content, [style], None, 1.0))


def test_capabilities_are_declared(backend: InferenceBackend) -> None:
    caps = backend.capabilities
    if "int8" in caps.dtypes:  # a loose per-pixel bound must come with a mean bound of at most a few levels
        assert caps.mean_tolerance is not None and 0 < caps.mean_tolerance <= 6 / 255 and caps.tolerance <= 0.25
    else:
        assert "float32" in caps.dtypes and 0 <= caps.tolerance <= 1 / 255
    assert backend.name in available_backends()
