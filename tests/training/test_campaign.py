"""The training campaign: first session starts from release weights, the next ones resume; history says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.imageio import tensor_to_pil
from training.campaign import main, read_history
from training.config import TrainConfig
from training.schedule import learning_rate


def _images(folder: Path, count: int, seed: int) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    for i in range(count):
        tensor_to_pil(torch.rand(3, 72, 80, generator=gen)).save(folder / f"{i}.png")
    return str(folder)


@pytest.fixture()
def release(tmp_path: Path) -> Path:
    from model import ModelConfig, StyA2K
    from model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    net = StyA2K(ModelConfig())
    path = tmp_path / "weights" / "start.pt"
    path.parent.mkdir()
    save_checkpoint(net, path, meta={"version": "start", "iterations": 40})
    return path


def test_campaign_starts_from_weights_then_resumes(tmp_path: Path, release: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STYA2K_CACHE", str(tmp_path / "cache"))
    content, style = _images(tmp_path / "c", 4, 1), _images(tmp_path / "s", 3, 2)
    args = ["--time-budget", "600", "--content-dir", content, "--style-dir", style, "--crop-size", "64",
            "--load-size", "64", "--batch-size", "2", "--iters", "43", "--threads", "1", "--ckpt-every", "1",
            "--sample-every", "0", "--init-weights", str(release), "--warmup-iters", "2"]
    assert main(args) == 0
    state_dir = tmp_path / "cache" / "campaign-a2k-64"
    assert (tmp_path / "cache" / "pack-64" / "index.json").is_file()  # the pack is built once, in the cache
    assert main([*args, "--iters", "45"]) == 0
    history = read_history(state_dir)
    assert [h["start_iteration"] for h in history] == [40, 43]
    assert [h["end_iteration"] for h in history] == [43, 45]
    assert "no training state" in history[0]["how"] and "fresh optimizer" in history[0]["how"]
    assert history[1]["how"].startswith("resumed")
    rows = (state_dir / "log.csv").read_text().splitlines()[1:]
    lrs = [float(r.split(",")[1]) for r in rows]
    assert [int(r.split(",")[0]) for r in rows] == [40, 41, 42, 43, 44]
    first = TrainConfig(run_dir="x", iters=43, lr=2e-4, warmup_iters=2)
    second = TrainConfig(run_dir="x", iters=45, lr=2e-4, warmup_iters=2)
    want = [learning_rate(i, first, 40) for i in (40, 41, 42)] + [learning_rate(i, second, 40) for i in (43, 44)]
    assert lrs == pytest.approx(want, rel=1e-4)
    assert lrs[0] == pytest.approx(learning_rate(40, first) / 2, rel=1e-4)  # the warm-up of the fresh optimizer
    state = torch.load(state_dir / "checkpoints" / "last.pt", weights_only=False)
    assert state["fresh_optimizer_at"] == 40 and json.dumps(history)


def test_a_later_phase_starts_from_the_earlier_phases_weights_with_its_own_schedule(
        tmp_path: Path, release: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("STYA2K_CACHE", str(tmp_path / "cache"))
    content, style = _images(tmp_path / "c", 4, 1), _images(tmp_path / "s", 3, 2)
    args = ["--time-budget", "600", "--content-dir", content, "--style-dir", style, "--crop-size", "48",
            "--load-size", "64", "--batch-size", "2", "--threads", "1", "--ckpt-every", "1", "--sample-every", "0",
            "--init-weights", str(release), "--warmup-iters", "0", "--lr", "1e-4"]
    assert main([*args, "--schedule-start", "41", "--iters", "50"]) == 2  # the weights are at 40: refused
    assert "before this run's schedule start 41" in caplog.text
    assert main([*args, "--schedule-start", "40", "--iters", "45"]) == 0
    state_dir = tmp_path / "cache" / "campaign-a2k-48"  # the state folder of this crop size
    rows = (state_dir / "log.csv").read_text().splitlines()[1:]
    lrs = [float(r.split(",")[1]) for r in rows]
    phase = TrainConfig(run_dir="x", iters=45, schedule_start=40, lr=1e-4)
    assert [int(r.split(",")[0]) for r in rows] == [40, 41, 42, 43, 44]
    assert lrs == pytest.approx([learning_rate(i, phase) for i in range(40, 45)], rel=1e-4)
    assert lrs[:3] == pytest.approx([1e-4] * 3, rel=1e-4) and lrs[3] < lrs[2]  # constant to 42, then down to 0
    assert read_history(state_dir)[-1]["lr_schedule"] == "constant 0.0001 from 40 to 42, linear to 0 at 45"
    # a resume keeps the phase's schedule start; a state folder never continues a run at another crop size
    assert main([*args, "--iters", "46"]) == 2 and "this run asks --schedule-start 0" in caplog.text
    monkeypatch.setenv("STYA2K_CAMPAIGN_DIR", str(state_dir))
    assert main([*args, "--crop-size", "64", "--schedule-start", "40", "--iters", "46"]) == 2
    assert "holds a run at 48 px crops, this one asks 64" in caplog.text
    assert read_history(state_dir)[-1]["end_iteration"] == 45  # neither refusal trained or wrote history


def test_the_loss_balance_reaches_the_trainer_and_its_checkpoint(tmp_path: Path, release: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 33: a campaign phase can run at another A2K* / style weight (the paper's lambda_2 trade-off)."""
    monkeypatch.setenv("STYA2K_CACHE", str(tmp_path / "cache"))
    content, style = _images(tmp_path / "c", 4, 1), _images(tmp_path / "s", 3, 2)
    args = ["--time-budget", "600", "--content-dir", content, "--style-dir", style, "--crop-size", "64",
            "--load-size", "64", "--batch-size", "2", "--iters", "41", "--threads", "1", "--ckpt-every", "1",
            "--sample-every", "0", "--init-weights", str(release), "--warmup-iters", "1",
            "--a2k-weight", "0.3", "--style-weight", "12"]
    assert main(args) == 0
    state = torch.load(tmp_path / "cache" / "campaign-a2k-64" / "checkpoints" / "last.pt", weights_only=False)
    assert state["train_config"]["a2k_weight"] == 0.3 and state["train_config"]["style_weight"] == 12.0
