"""Training loop smoke tests on generated 64x64 images (CPU, a few iterations)."""

from __future__ import annotations

import argparse
import csv
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from model.export import update_manifest
from model.imageio import tensor_to_pil
from model.train import TrainConfig, Trainer, add_arguments, config_from_args, learning_rate, main


def _images(folder: Path, count: int, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    for i in range(count):
        # Smooth colour blobs + noise: something with structure and texture for the losses to act on.
        base = torch.rand(3, 6, 6, generator=gen)
        smooth = torch.nn.functional.interpolate(base[None], size=(80, 96), mode="bicubic")[0]
        noise = 0.15 * torch.rand(3, 80, 96, generator=gen)
        tensor_to_pil((smooth + noise).clamp(0, 1)).save(folder / f"{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("train_data")
    return str(_images(root / "content", 6, seed=1)), str(_images(root / "style", 4, seed=2))


def _config(run_dir: Path, data_dirs: tuple[str, str], **overrides: object) -> TrainConfig:
    base = TrainConfig(
        run_dir=str(run_dir),
        content_dirs=(data_dirs[0],),
        style_dirs=(data_dirs[1],),
        load_size=72,
        crop_size=64,
        batch_size=2,
        iters=4,
        workers=0,
        threads=1,  # one thread: a second one only contends with the test runner on 2-core CI
        device="cpu",
        ckpt_every=2,
        sample_every=0,
        log_every=1,
        sample_contents=2,
        sample_styles=2,
    )
    return replace(base, **overrides)


def test_learning_rate_is_constant_then_linear_to_zero() -> None:
    cfg = TrainConfig(run_dir="x", iters=100, lr=1e-3, constant_frac=0.4)
    assert learning_rate(0, cfg) == learning_rate(39, cfg) == 1e-3
    assert learning_rate(40, cfg) == pytest.approx(1e-3)
    assert learning_rate(70, cfg) == pytest.approx(0.5e-3)
    assert learning_rate(99, cfg) == pytest.approx(1e-3 / 60)


def test_loss_decreases_on_a_fixed_batch(tmp_path: Path, data_dirs: tuple[str, str]) -> None:
    trainer = Trainer(_config(tmp_path / "run", data_dirs, lr=1e-4, constant_frac=1.0))
    content, style = (torch.stack(t) for t in zip(*(trainer.data[i] for i in range(2)), strict=True))
    losses = [trainer.step(content, style)["total"] for _ in range(20)]
    assert sum(losses[-3:]) / 3 < 0.6 * losses[0], losses


def test_resume_continues_exactly(tmp_path: Path, data_dirs: tuple[str, str]) -> None:
    straight = Trainer(_config(tmp_path / "straight", data_dirs))
    straight.train()
    interrupted = Trainer(_config(tmp_path / "resumed", data_dirs))
    interrupted.train(stop_at=2)
    resumed = Trainer(_config(tmp_path / "resumed", data_dirs), resume=tmp_path / "resumed/checkpoints/last.pt")
    assert resumed.iteration == 2
    resumed.train()

    def losses(run: str) -> list[str]:
        with (tmp_path / run / "log.csv").open() as handle:
            return [row["total"] for row in csv.DictReader(handle)]

    assert len(losses("straight")) == 4
    assert losses("resumed") == losses("straight")
    for name, tensor in straight.net.trainable_state_dict().items():
        assert torch.equal(tensor, resumed.net.trainable_state_dict()[name]), name
    assert (tmp_path / "resumed" / "loss_curves.png").exists()


def test_cli_trains_writes_samples_and_exports(tmp_path: Path, data_dirs: tuple[str, str]) -> None:
    run_dir = tmp_path / "cli"
    out = tmp_path / "weights" / "tiny.pt"
    code = main([
        "--run-dir", str(run_dir), "--content-dir", data_dirs[0], "--style-dir", data_dirs[1],
        "--load-size", "64", "--crop-size", "64", "--batch-size", "2", "--iters", "2", "--workers", "1",
        "--threads", "1", "--device", "cpu", "--ckpt-every", "1", "--sample-every", "2", "--arch", "adain",
        "--export", str(out), "--version-tag", "test-adain",
    ])
    assert code == 0
    grids = sorted((run_dir / "samples").glob("*.png"))
    assert [g.name for g in grids] == ["iter_0000000.png", "iter_0000002.png"]
    with Image.open(grids[-1]) as grid:
        assert grid.width > 3 * 64
    from model import StyA2K

    manifest = (out.parent / "MANIFEST").read_text().split()
    assert manifest[1] == "tiny.pt"
    net = StyA2K.from_checkpoint(out)  # verifies the sha256 against the manifest
    assert net.config.arch == "adain"
    assert net.meta["iterations"] == 2 and net.meta["version"] == "test-adain"


def test_cli_rejects_missing_resume_and_empty_data(tmp_path: Path, data_dirs: tuple[str, str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["--run-dir", str(tmp_path / "r"), "--style-dir", data_dirs[1], "--device", "cpu"]
    assert main([*base, "--content-dir", str(empty)]) == 2
    assert main([*base, "--content-dir", data_dirs[0], "--resume"]) == 2


def test_add_arguments_round_trips_into_config() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--run-dir", "r", "--arch", "all_to_all", "--crop-size", "128"]))
    assert cfg.arch == "all_to_all" and cfg.crop_size == 128 and cfg.batch_size == 8 and cfg.lr == 2e-4


def test_update_manifest_replaces_only_its_line(tmp_path: Path) -> None:
    manifest = tmp_path / "MANIFEST"
    manifest.write_text("aaa  other.pt\nbbb  mine.pt\n")
    update_manifest(manifest, "mine.pt", "ccc")
    assert manifest.read_text() == "ccc  mine.pt\naaa  other.pt\n"
