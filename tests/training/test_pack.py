"""Pre-decoded training packs: same items as the image folders, clear errors for broken packs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.checkpoint import default_cache_dir
from model.imageio import tensor_to_pil
from training.data import ContentStylePairs, CropConfig, PairDataConfig
from training.pack import PackedPairs, PackError, build_pack


def _images(folder: Path, count: int, seed: int, size: tuple[int, int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    for i in range(count):
        tensor_to_pil(torch.rand(3, *size, generator=gen)).save(folder / f"{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("pack_data")
    content = _images(root / "content", 5, 1, (70, 90))
    style_a = _images(root / "style_a", 3, 2, (100, 60))
    style_b = _images(root / "style_b", 2, 3, (64, 64))
    return content, style_a, style_b


def test_pack_items_equal_folder_items(tmp_path: Path, folders: tuple[Path, Path, Path]) -> None:
    content, style_a, style_b = folders
    pack = build_pack(tmp_path / "pack", (str(content),), (str(style_a), str(style_b)), load_size=48)
    packed = PackedPairs(pack, crop_size=32, seed=7, load_size=48)
    plain = ContentStylePairs(PairDataConfig(content_dirs=(str(content),), style_dirs=(str(style_a), str(style_b)),
                                             crop=CropConfig(load_size=48, crop_size=32), seed=7))
    assert len(packed) == len(plain) == 5 and [len(g) for g in packed.style_groups] == [3, 2]
    for index in (0, 1, 4, 5, 11, 123):  # across epochs: the same per-epoch permutation
        for got, want in zip(packed[index], plain[index], strict=True):
            assert got.shape == want.shape == (3, 32, 32)
            assert torch.equal(got, want), index
    assert packed.summary()["pack"] is True and packed.summary()["n_style"] == [3, 2]


def test_pack_skips_unreadable_files(tmp_path: Path, folders: tuple[Path, Path, Path]) -> None:
    content = tmp_path / "content"
    content.mkdir()
    for f in folders[0].iterdir():
        (content / f.name).write_bytes(f.read_bytes())
    (content / "broken.png").write_bytes(b"\x89PNG not really")
    pack = build_pack(tmp_path / "pack", (str(content),), (str(folders[1]),), load_size=40)
    index = json.loads((pack / "index.json").read_text())
    assert index["pools"]["content"]["skipped"] == 1
    assert len(PackedPairs(pack, crop_size=32)) == 5


def test_broken_packs_are_refused_with_a_reason(tmp_path: Path, folders: tuple[Path, Path, Path]) -> None:
    with pytest.raises(PackError, match=r"no index\.json"):
        PackedPairs(tmp_path, crop_size=32)
    pack = build_pack(tmp_path / "pack", (str(folders[0]),), (str(folders[1]),), load_size=40)
    with pytest.raises(PackError, match="load size 40, the run asks 64"):
        PackedPairs(pack, crop_size=32, load_size=64)
    with pytest.raises(PackError, match="exceeds the pack's load size"):
        PackedPairs(pack, crop_size=48)
    data = (pack / "content.u8").read_bytes()
    (pack / "content.u8").write_bytes(data[:-10])
    with pytest.raises(PackError, match="rebuild the pack"):
        PackedPairs(pack, crop_size=32)


def test_cache_dir_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STYA2K_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("STYA2K_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "stya2k"
