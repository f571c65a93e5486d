"""Quality harness end to end on generated images with a randomly initialised model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from model.encoder import VGGEncoder
from model.imageio import tensor_to_pil
from training.evaluate import (
    TEXTURE_TAPS,
    content_loss,
    main,
    prepare_style,
    select,
    style_grams,
    style_loss,
    texture_loss,
)


def _images(folder: Path, count: int, seed: int, size: tuple[int, int] = (72, 64)) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    for i in range(count):
        base = torch.nn.functional.interpolate(torch.rand(1, 3, 5, 5, generator=gen), size=size[::-1], mode="bicubic")
        tensor_to_pil(base[0].clamp(0, 1)).save(folder / f"{i}.png")
    return str(folder)


def test_metrics_are_zero_for_identical_features_and_positive_otherwise() -> None:
    feats = {t: torch.rand(1, 8, 6, 6) for t in ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")}
    other = {t: v * 2 + 0.3 for t, v in feats.items()}
    assert content_loss(feats, feats) == 0.0 and style_loss(feats, feats) == 0.0
    assert style_loss(other, feats) > 0
    assert content_loss(other, feats) == pytest.approx(0.0, abs=1e-4)  # mvn removes affine changes
    assert texture_loss(feats, style_grams(feats)) == 0.0 and texture_loss(other, style_grams(feats)) > 0
    assert set(style_grams(feats)) == set(TEXTURE_TAPS)  # relu1_1 .. relu4_1: relu5_1 is not a texture tap


def _textured(size: int = 128) -> torch.Tensor:
    """A smooth random colour field plus diagonal stripes: (1, 3, size, size) in [0, 1]."""
    gen = torch.Generator().manual_seed(0)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 16, 16, generator=gen), size=(size, size), mode="bicubic")
    yy, xx = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    return (0.6 * base + 0.4 * (0.5 + 0.5 * torch.sin((xx + yy) * 0.8))).clamp(0, 1)


def _shuffle_blocks(img: torch.Tensor, block: int, gen: torch.Generator) -> torch.Tensor:
    """The same image with its block x block tiles in another order (layout changed, texture kept)."""
    b, c, h, w = img.shape
    tiles = img.reshape(b, c, h // block, block, w // block, block).permute(0, 2, 4, 1, 3, 5)
    tiles = tiles.reshape(b, -1, c, block, block)[:, torch.randperm((h // block) * (w // block), generator=gen)]
    return tiles.reshape(b, h // block, w // block, c, block, block).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


@torch.inference_mode()
def test_texture_loss_measures_texture_not_layout() -> None:
    encoder = VGGEncoder()
    img = _textured()
    gen = torch.Generator().manual_seed(1)
    target = style_grams(encoder(img))
    pixels = img.flatten(2)[..., torch.randperm(img.shape[2] * img.shape[3], generator=gen)].view_as(img)
    self_loss = texture_loss(encoder(img), target)
    blocks = texture_loss(encoder(_shuffle_blocks(img, 32, gen)), target)
    shuffled = texture_loss(encoder(pixels), target)  # same colours, texture destroyed
    assert self_loss == 0.0
    assert blocks > 0 and shuffled > 10 * blocks  # measured: ~25 vs ~1300
    assert all(map(math.isfinite, (blocks, shuffled)))
    # The style image at another size is scored by the same position-averaged statistic (finite, same scale).
    half = texture_loss(encoder(torch.nn.functional.interpolate(img, scale_factor=0.5, mode="area")), target)
    assert math.isfinite(half) and half < shuffled


def test_selection_is_fixed_by_seed_and_checks_count() -> None:
    files = [Path(f"{i}.png") for i in range(10)]
    assert select(files, 3, 0, "content") == select(files, 3, 0, "content")
    with pytest.raises(ValueError, match="only 10 exist"):
        select(files, 11, 0, "content")


def test_harness_end_to_end_with_random_models(tmp_path: Path) -> None:
    content = _images(tmp_path / "content", 3, seed=1)
    style = _images(tmp_path / "style", 3, seed=2, size=(64, 80))
    out_json, out_md = tmp_path / "q.json", tmp_path / "q.md"
    code = main([
        "--weights", "random:a2k", "--weights", "random:adain", "--content-dir", content, "--style-dir", style,
        "--n-content", "2", "--n-style", "2", "--size", "64", "--lpips-dir", str(tmp_path / "no_lpips"),
        "--threads", "2", "--out-json", str(out_json), "--out-md", str(out_md),
    ])
    assert code == 0
    rows = json.loads(out_json.read_text())["results"]
    assert [r["arch"] for r in rows] == ["a2k", "adain"]
    for row in rows:
        assert row["pairs"] == 4
        assert row["content_loss"] > 0 and row["style_loss"] > 0 and row["sec_per_image"] > 0
        assert row["texture_loss"] > 0 and math.isfinite(row["texture_loss"])
        assert row["lpips"] is None  # no LPIPS weights given
    table = out_md.read_text()
    assert "| random:a2k | a2k |" in table and "LPIPS" in table
    _assert_texture_column(table, rows)


def _assert_texture_column(table: str, rows: list[dict]) -> None:
    """The markdown table has a texture column, and every row's cell there is that row's JSON value."""
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    column = header.index("texture (Gram) ↓")
    assert column == header.index("style loss ↓") + 1
    body = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[1:])}
    assert len(body) == len(rows)
    for row in rows:
        assert len(body[row["name"]]) == len(header)
        assert body[row["name"]][column] == f"{row['texture_loss']:.4f}"


def test_harness_reports_bad_input_as_exit_code(tmp_path: Path) -> None:
    content = _images(tmp_path / "content", 1, seed=1)
    assert main(["--weights", "random:a2k", "--content-dir", content, "--style-dir", content,
                 "--n-content", "5", "--n-style", "1", "--size", "64"]) == 2
    assert main(["--weights", str(tmp_path / "missing.pt"), "--content-dir", content, "--style-dir", content,
                 "--n-content", "1", "--n-style", "1", "--size", "64"]) == 2


def _tinted(folder: Path, tints: list[tuple[float, float, float]]) -> str:
    """Styles that differ clearly in colour statistics (a colour transfer can tell them apart)."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(5)
    for i, tint in enumerate(tints):
        texture = torch.rand(1, 3, 8, 8, generator=gen)
        base = torch.nn.functional.interpolate(texture, size=(64, 64), mode="bicubic")[0].clamp(0, 1)
        tensor_to_pil((0.3 * base + 0.7 * torch.tensor(tint)[:, None, None]).clamp(0, 1)).save(folder / f"{i}.png")
    return str(folder)


def test_references_bound_style_retrieval(tmp_path: Path) -> None:
    content = _images(tmp_path / "content", 2, seed=1)
    style = _tinted(tmp_path / "style", [(0.9, 0.1, 0.1), (0.1, 0.8, 0.2), (0.1, 0.2, 0.9)])
    out_json = tmp_path / "q.json"
    lpips_dir = Path(__file__).resolve().parents[2].parent / "shared" / "weights" / "lpips"
    code = main([
        "--weights", "reference:identity", "--weights", "reference:color", "--content-dir", content,
        "--style-dir", style, "--n-content", "2", "--n-style", "3", "--size", "64", "--lpips-dir", str(lpips_dir),
        "--threads", "1", "--out-json", str(out_json), "--out-md", str(tmp_path / "q.md"),
    ])
    assert code == 0
    identity, color = json.loads(out_json.read_text())["results"]
    assert identity["arch"] == color["arch"] == "reference" and identity["n_styles"] == 3
    # The identity output is the same for every style, so exactly one style in three is "retrieved".
    assert identity["style_retrieval"] == pytest.approx(1 / 3)
    assert identity["content_loss"] == pytest.approx(0.0, abs=1e-6)
    assert color["style_retrieval"] == 1.0 and color["style_loss"] < identity["style_loss"]
    # The references get the texture column too: the photo's own texture is not the painting's.
    assert identity["texture_loss"] > 0 and color["texture_loss"] > 0
    _assert_texture_column((tmp_path / "q.md").read_text(), [identity, color])
    if lpips_dir.is_dir():
        assert identity["style_spread"] == pytest.approx(0.0, abs=1e-6) and color["style_spread"] > 0.05
    else:
        assert identity["style_spread"] is None
    assert "style retrieval" in (tmp_path / "q.md").read_text()
    assert main(["--weights", "reference:nope", "--content-dir", content, "--style-dir", style,
                 "--n-content", "1", "--n-style", "1", "--size", "64"]) == 2


def test_style_fit_prepares_the_network_input() -> None:
    panorama = Image.new("RGB", (400, 100), (10, 20, 30))
    assert prepare_style(panorama, 64, "short").size == (256, 64)  # the harness's original rule
    assert prepare_style(panorama, 64, "crop").size == (64, 64)  # the service's crop
    assert prepare_style(panorama, 64, "whole").size == (64, 16)  # the service's whole: long side, aspect kept
    assert prepare_style(Image.new("RGB", (30, 60)), 64, "whole").size == (32, 64)  # upscaled like the others
    with pytest.raises(ValueError, match="short, crop, whole"):
        prepare_style(panorama, 64, "stretch")


def test_harness_style_fit_changes_the_input_not_the_target(tmp_path: Path) -> None:
    content = _images(tmp_path / "content", 2, seed=1)
    style = _images(tmp_path / "style", 2, seed=2, size=(160, 64))  # wide: crop and whole differ
    rows = {}
    for fit in ("short", "crop", "whole"):
        out_json = tmp_path / f"{fit}.json"
        assert main([
            "--weights", "reference:color", "--content-dir", content, "--style-dir", style, "--n-content", "2",
            "--n-style", "2", "--size", "64", "--lpips-dir", str(tmp_path / "no_lpips"), "--threads", "1",
            "--style-fit", fit, "--out-json", str(out_json),
        ]) == 0
        result = json.loads(out_json.read_text())
        assert result["config"]["style_fit"] == fit
        rows[fit] = result["results"][0]
        assert rows[fit]["style_fit"] == fit
    # The colour transfer copies the input style's RGB statistics: a different input, a different output,
    # scored against the same target (so the losses differ, but all are finite and positive).
    losses = {fit: row["style_loss"] for fit, row in rows.items()}
    assert len(set(losses.values())) == 3 and all(v > 0 for v in losses.values())


def test_style_size_changes_the_input_and_style_target_size_fixes_the_score(tmp_path: Path) -> None:
    content = _images(tmp_path / "content", 1, seed=1)
    style = _tinted(tmp_path / "style", [(0.9, 0.1, 0.1), (0.1, 0.2, 0.9)])

    def row(*extra: str) -> dict:
        out_json = tmp_path / "q.json"
        assert main(["--weights", "reference:identity", "--weights", "reference:color", "--content-dir", content,
                     "--style-dir", style, "--n-content", "1", "--n-style", "2", "--size", "64",
                     "--lpips-dir", str(tmp_path / "no_lpips"), "--threads", "1", "--out-json", str(out_json),
                     "--out-md", str(tmp_path / "q.md"), *extra]) == 0
        result = json.loads(out_json.read_text())
        return {"config": result["config"], "md": (tmp_path / "q.md").read_text(),
                **{r["name"]: r for r in result["results"]}}

    identity, color = "reference (identity)", "reference (colour transfer)"
    small = row("--style-size", "32", "--style-target-size", "64")
    large = row("--style-size", "64", "--style-target-size", "64")
    legacy = row("--style-size", "32")  # the target follows --style-size, as in every earlier table
    assert small["config"]["style_size"] == 32 and small["config"]["style_target_size"] == 64
    assert small[color]["style_size"] == 32 and large[color]["style_size"] == 64
    # The identity output ignores the style, so with one target its scores cannot depend on the input size ...
    for key in ("style_loss", "texture_loss"):
        assert small[identity][key] == pytest.approx(large[identity][key], rel=1e-6)
        assert legacy[identity][key] != pytest.approx(large[identity][key], rel=1e-3)  # ... but on the target's
    # ... while the colour transfer reads the (resampled) input style, so its output, and score, move.
    assert small[color]["texture_loss"] != large[color]["texture_loss"]
    assert "style fit short at 32 px, scored against the style at a 64 px short side" in small["md"]
