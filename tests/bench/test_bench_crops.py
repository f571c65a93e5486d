"""bench.crops: the 100% zoom crop grid, on generated images with an untrained model (seconds, no ../shared)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from bench import crops
from model.imageio import pil_to_tensor, tensor_to_pil
from training.data import resize_short_side
from training.evaluate import load_weights, prepare_style


def _images(folder: Path, sizes: list[tuple[int, int]], seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    paths = []
    for i, (width, height) in enumerate(sizes):
        noise = torch.rand(1, 3, 6, 6, generator=gen)
        img = torch.nn.functional.interpolate(noise, size=(height, width), mode="bicubic")[0].clamp(0, 1)
        paths.append(folder / f"img{i}.png")
        tensor_to_pil(img).save(paths[-1])
    return paths


def _run(tmp_path: Path, *extra: str) -> tuple[list[Path], list[Path], Path]:
    contents = _images(tmp_path / "content", [(80, 64), (64, 64)], seed=1)
    styles = _images(tmp_path / "style", [(96, 48), (50, 70), (64, 64)], seed=2)
    out = tmp_path / "grid.png"  # lossless, so the test can compare pixels exactly
    code = crops.main(["--weights", "random:a2k", "--size", "64", "--crop", "32", "--style-size", "48",
                       "--threads", "1", "--contents", *map(str, contents), "--styles", *map(str, styles),
                       "--out", str(out), *extra])
    assert code == 0
    return contents, styles, out


def test_grid_cells_are_unresampled_centre_crops_of_the_outputs(tmp_path: Path) -> None:
    contents, styles, out = _run(tmp_path)
    grid = Image.open(out).convert("RGB")
    crop, pad = 32, crops.PAD
    # Heads plus 2 photos x 3 styles, one pad between cells.
    assert grid.size == (pad + 4 * (crop + pad), crops.TITLE_HEIGHT + pad + 3 * (crop + pad))
    net, _ = load_weights("random:a2k")
    photo = resize_short_side(Image.open(contents[0]).convert("RGB"), 64)  # 80x64 -> 80x64: already 64 px
    style = prepare_style(Image.open(styles[0]).convert("RGB"), 48, "crop")  # the service's crop: 48x48
    with torch.inference_mode():
        full = tensor_to_pil(net.eval().stylize(pil_to_tensor(photo)[None], pil_to_tensor(style)[None])[0])
    assert full.size == (80, 64)
    left, top = crops._cell_origin(1, 1, crop)
    cell = grid.crop((left, top, left + crop, top + crop))
    expected = full.crop((24, 16, 56, 48))  # the centre 32 x 32 of the 80 x 64 output
    assert cell.tobytes() == expected.tobytes()
    # Row head: the same centre crop of the photo (outside the caption box at its top-left).
    left, top = crops._cell_origin(1, 0, crop)
    assert grid.getpixel((left + 31, top + 31)) == photo.getpixel((24 + 31, 16 + 31))


def test_style_heads_show_the_style_as_the_network_saw_it(tmp_path: Path) -> None:
    _, styles, out = _run(tmp_path, "--style-fit", "whole")
    grid = Image.open(out).convert("RGB")
    style = prepare_style(Image.open(styles[0]).convert("RGB"), 48, "whole")  # 96x48 -> long side 48: 48x24
    assert style.size == (48, 24)
    shown = crops.centre_crop(style, 32)  # 32x24: narrower than a cell, pasted centred on white
    left, top = crops._cell_origin(0, 1, 32)
    top += (32 - 24) // 2
    assert grid.getpixel((left + 31, top + 23)) == shown.getpixel((31, 23))
    assert grid.getpixel((left + 31, top - 1)) == (255, 255, 255)


def test_centre_crop_cuts_and_never_resamples() -> None:
    img = Image.new("RGB", (10, 6))
    img.putpixel((5, 3), (200, 10, 10))
    cut = crops.centre_crop(img, 4)
    assert cut.size == (4, 4) and cut.getpixel((2, 2)) == (200, 10, 10)  # the centre (3..7, 1..5)
    assert crops.centre_crop(img, 8).size == (8, 6)  # a side shorter than the crop stays as it is


def test_default_out_names_one_file_per_candidate_and_style_size() -> None:
    spec = crops.GridSpec(contents=(), styles=(), content_captions=(), style_captions=(), style_size=384)
    assert crops.default_out("stya2k-v0.6-cpu.pt", spec) == crops.REPO_ROOT / "docs" / "crops-stya2k-v0.6-cpu-s384.jpg"
    whole = crops.GridSpec(contents=(), styles=(), content_captions=(), style_captions=(), style_fit="whole",
                           style_size=256)  # fmt: skip
    name = crops.default_out("reference (colour transfer)", whole).name
    assert name == "crops-reference-colour-transfer-s256-whole.jpg"


def test_default_files_are_the_named_eval_images() -> None:
    paths, captions = crops.default_files(crops.EVAL / "style", crops.STYLES)
    assert len(paths) == 6 and len(captions) == 6 and "Starry Night" in captions
    assert len(crops.CONTENTS) == 4 and all(p.parent == crops.EVAL / "style" for p in paths)
    if not crops.EVAL.is_dir():
        pytest.skip(f"{crops.EVAL} is missing: the default images cannot be checked")
    photos, _ = crops.default_files(crops.EVAL / "content", crops.CONTENTS)
    for path in [*photos, *paths]:
        assert path.is_file(), path
    for path in photos:  # 512 x 512: at --size 512 the photo is not resampled either
        assert Image.open(path).size == (512, 512)


def test_bad_options_and_files_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photo = _images(tmp_path / "content", [(64, 64)], seed=1)[0]
    base = ["--weights", "random:a2k", "--contents", str(photo), "--styles", str(photo), "--out",
            str(tmp_path / "g.jpg")]
    with pytest.raises(SystemExit) as exit_info:
        crops.main([*base[:5], str(tmp_path / "missing.jpg"), *base[6:]])
    assert exit_info.value.code == 2 and "missing.jpg" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        crops.main([*base, "--size", "64", "--crop", "128"])
    assert "larger than the output" in capsys.readouterr().err
    assert crops.main(["--weights", str(tmp_path / "nope.pt"), *base[2:], "--size", "32", "--crop", "16"]) == 2
    assert not (tmp_path / "g.jpg").exists()
