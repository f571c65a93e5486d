"""Data pipeline: listing, robust loading, deterministic crops and pairs."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from model.imageio import pil_to_tensor, tensor_to_pil
from training.data import (
    ContentStylePairs,
    CropConfig,
    DataError,
    PairDataConfig,
    StepSampler,
    list_images,
    load_rgb,
    random_crop,
    resize_short_side,
)


def _gradient_image(width: int, height: int, seed: int) -> Image.Image:
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(3, height, width, generator=gen)
    return tensor_to_pil(noise)


def _make_folder(root: Path, count: int, seed: int, size: tuple[int, int] = (96, 72)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        _gradient_image(*size, seed=seed + i).save(root / f"img_{i:02d}.png")
    return root


def test_tensor_pil_round_trip_is_exact() -> None:
    img = _gradient_image(37, 23, seed=1)
    tensor = pil_to_tensor(img)
    assert tensor.shape == (3, 23, 37)
    assert tensor.min() >= 0.0 and tensor.max() <= 1.0
    assert tensor_to_pil(tensor).tobytes() == img.tobytes()


def test_resize_short_side_upscales_and_keeps_aspect() -> None:
    img = Image.new("RGB", (60, 40))
    assert resize_short_side(img, 80).size == (120, 80)
    assert resize_short_side(Image.new("RGB", (500, 1000)), 100).size == (100, 200)


def test_list_images_filters_suffixes_and_errors_on_missing(tmp_path: Path) -> None:
    _make_folder(tmp_path / "a", 2, seed=0)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    assert [p.name for p in list_images([tmp_path / "a"])] == ["img_00.png", "img_01.png"]
    with pytest.raises(DataError, match="does not exist"):
        list_images([tmp_path / "missing"])


def test_one_image_suffix_list_and_a_gif_is_an_image(tmp_path: Path) -> None:
    from model import imageio
    from training import calibrate, data

    assert data.IMAGE_SUFFIXES is imageio.IMAGE_SUFFIXES is calibrate.IMAGE_SUFFIXES  # one definition
    folder = tmp_path / "mixed"
    _make_folder(folder, 1, seed=0)
    frames = [_gradient_image(48, 40, seed=s).convert("P") for s in (1, 2)]
    frames[0].save(folder / "anim.GIF", save_all=True, append_images=frames[1:])
    assert [p.name for p in list_images([folder])] == ["anim.GIF", "img_00.png"]
    first = load_rgb(folder / "anim.GIF")  # the first frame, as RGB
    assert first.mode == "RGB" and first.size == (48, 40)
    assert [p.name for p in calibrate.select_images(folder, 8)] == ["anim.GIF", "img_00.png"]


def test_load_rgb_rejects_corrupt_and_tiny(tmp_path: Path) -> None:
    corrupt = tmp_path / "bad.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff garbage")
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (8, 8)).save(tiny)
    with pytest.raises(OSError, match="cannot decode"):
        load_rgb(corrupt)
    with pytest.raises(ValueError, match="short side"):
        load_rgb(tiny)


def test_random_crop_shape_and_determinism() -> None:
    img = _gradient_image(90, 60, seed=3)
    cfg = CropConfig(load_size=80, crop_size=64)
    a = random_crop(img, cfg, random.Random(5))
    b = random_crop(img, cfg, random.Random(5))
    assert a.shape == (3, 64, 64)
    assert torch.equal(a, b)


def test_pairs_are_a_pure_function_of_seed_and_index(tmp_path: Path) -> None:
    cfg = PairDataConfig(
        content_dirs=(str(_make_folder(tmp_path / "c", 5, seed=0)),),
        style_dirs=(str(_make_folder(tmp_path / "s1", 3, seed=50)), str(_make_folder(tmp_path / "s2", 2, seed=90))),
        crop=CropConfig(load_size=64, crop_size=48),
        seed=7,
    )
    first, second = ContentStylePairs(cfg), ContentStylePairs(cfg)
    for index in (0, 3, 11, 4):  # out of order and past one epoch
        c1, s1 = first[index]
        c2, s2 = second[index]
        assert c1.shape == s1.shape == (3, 48, 48)
        assert torch.equal(c1, c2) and torch.equal(s1, s2)
    other_seed = ContentStylePairs(PairDataConfig(**{**cfg.__dict__, "seed": 8}))
    assert not torch.equal(first[0][0], other_seed[0][0])
    assert first.summary()["n_style"] == [3, 2]


def test_corrupt_files_are_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    content = _make_folder(tmp_path / "c", 2, seed=0)
    (content / "zz_corrupt.jpg").write_bytes(b"not a jpeg at all")
    Image.new("RGB", (10, 10)).save(content / "zz_tiny.png")
    style = _make_folder(tmp_path / "s", 2, seed=9)
    data = ContentStylePairs(
        PairDataConfig(content_dirs=(str(content),), style_dirs=(str(style),), crop=CropConfig(64, 32))
    )
    with caplog.at_level(logging.WARNING, logger="training.data"):
        crops = [data[i] for i in range(8)]  # two epochs: every file, bad ones included, is drawn
    assert all(c.shape == (3, 32, 32) for c, _ in crops)
    warned = caplog.text
    assert "zz_corrupt.jpg" in warned and "zz_tiny.png" in warned


def test_step_sampler_resumes_at_an_offset() -> None:
    assert list(StepSampler(4, 8)) == [4, 5, 6, 7]
    assert len(StepSampler(8, 4)) == 0
