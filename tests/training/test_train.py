"""Training loop smoke tests on generated 64x64 images (CPU, a few iterations)."""

from __future__ import annotations

import argparse
import csv
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from model.checkpoint import load_checkpoint, trainable_state_dict, write_manifest_entry
from model.hardware import has_native_bf16
from model.imageio import tensor_to_pil
from training.config import TrainConfig
from training.deadline import Deadline
from training.levers import StepLevers, ThreadTuner
from training.schedule import learning_rate
from training.train import Trainer, add_arguments, config_from_args, main


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
        # Fixed levers: "auto" measures at start, and a resumed run must take the same path as the straight one.
        channels_last="off",
        bf16="off",
        bf16_trained="off",
    )
    return replace(base, **overrides)


def test_learning_rate_is_constant_then_linear_to_zero() -> None:
    cfg = TrainConfig(run_dir="x", iters=100, lr=1e-3, constant_frac=0.4)
    assert learning_rate(0, cfg) == learning_rate(39, cfg) == 1e-3
    assert learning_rate(40, cfg) == pytest.approx(1e-3)
    assert learning_rate(70, cfg) == pytest.approx(0.5e-3)
    assert learning_rate(99, cfg) == pytest.approx(1e-3 / 60)


def test_a_later_phase_has_its_own_schedule_over_the_iterations_after_its_start() -> None:
    cfg = TrainConfig(run_dir="x", iters=200, schedule_start=100, lr=1e-3, constant_frac=0.4)
    assert learning_rate(100, cfg) == learning_rate(139, cfg) == 1e-3
    assert learning_rate(170, cfg) == pytest.approx(0.5e-3)
    assert learning_rate(199, cfg) == pytest.approx(1e-3 / 60)
    warm = TrainConfig(run_dir="x", iters=200, schedule_start=100, lr=1e-3, warmup_iters=10)
    assert learning_rate(104, warm, fresh_optimizer_at=100) == pytest.approx(5e-4)  # the phase's fresh Adam
    with pytest.raises(ValueError, match="schedule_start"):
        TrainConfig(run_dir="x", iters=200, schedule_start=200)


def test_a_schedule_start_must_fit_where_the_run_starts(tmp_path: Path, data_dirs: tuple[str, str]) -> None:
    with pytest.raises(ValueError, match="a fresh run is at iteration 0, before this run's schedule start 2"):
        Trainer(_config(tmp_path / "fresh", data_dirs, iters=4, schedule_start=2))  # a fresh run starts at 0
    Trainer(_config(tmp_path / "run", data_dirs, iters=2)).train()
    with pytest.raises(ValueError, match="starts at iteration 0, this run asks --schedule-start 1"):
        Trainer(_config(tmp_path / "run", data_dirs, iters=4, schedule_start=1),
                resume=tmp_path / "run/checkpoints/last.pt")
    base = ["--run-dir", str(tmp_path / "cli"), "--content-dir", data_dirs[0], "--style-dir", data_dirs[1],
            "--device", "cpu", "--iters", "4"]
    assert main([*base, "--schedule-start", "4"]) == 2  # not inside the run: a clear error, no traceback
    assert main([*base, "--schedule-start", "2"]) == 2


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
    for name, tensor in trainable_state_dict(straight.net).items():
        assert torch.equal(tensor, trainable_state_dict(resumed.net)[name]), name
    assert (tmp_path / "resumed" / "loss_curves.png").exists()


def test_resume_with_other_levers_says_so(tmp_path: Path, data_dirs: tuple[str, str],
                                          caplog: pytest.LogCaptureFixture) -> None:
    first = Trainer(_config(tmp_path / "run", data_dirs))
    first.train(stop_at=1)
    with caplog.at_level("WARNING", logger="training.train"):
        Trainer(_config(tmp_path / "run", data_dirs), resume=tmp_path / "run/checkpoints/last.pt")
    assert "step levers differ" not in caplog.text  # same levers: silent
    with caplog.at_level("WARNING", logger="training.train"):
        Trainer(_config(tmp_path / "run", data_dirs, channels_last="on"), resume=tmp_path / "run/checkpoints/last.pt")
    assert "step levers differ from the checkpoint's: channels_last=False" in caplog.text
    assert "-> channels_last=True" in caplog.text


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
    manifest = (out.parent / "MANIFEST").read_text().split()
    assert manifest[1] == "tiny.pt"
    net = load_checkpoint(out)  # verifies the sha256 against the manifest
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


def test_manifest_entry_replaces_only_its_line(tmp_path: Path) -> None:
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    manifest = tmp_path / "SUMS"  # export --manifest may name any file, not only the MANIFEST beside the weights
    manifest.write_text(f"# release weights\n{a}  other.pt\n{b}  mine.pt\n")
    write_manifest_entry(tmp_path / "out" / "mine.pt", c, manifest)
    assert manifest.read_text() == f"# release weights\n{c}  mine.pt\n{a}  other.pt\n"
    assert not list(tmp_path.glob("*.tmp"))  # written beside itself, then renamed


def _grads_after_step(trainer: Trainer, content: torch.Tensor, style: torch.Tensor) -> tuple[dict, dict]:
    values = trainer.step(content, style)
    grads = {n: p.grad.detach().clone() for n, p in trainer.net.named_parameters() if p.grad is not None}
    return values, grads


def _fixed_batch(trainer: Trainer) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(torch.stack(t) for t in zip(*(trainer.data[i] for i in range(2)), strict=True))


@pytest.mark.parametrize("levers", [{"channels_last": "on", "fused_encode": True},
                                    {"channels_last": "off", "fused_encode": True},
                                    {"channels_last": "on", "fused_encode": False}])
def test_fast_step_computes_the_plain_losses_and_gradients(tmp_path: Path, data_dirs: tuple[str, str],
                                                           levers: dict) -> None:
    plain = Trainer(_config(tmp_path / "plain", data_dirs, fused_encode=False))
    fast = Trainer(_config(tmp_path / "fast", data_dirs, **levers))
    assert not plain.levers.channels_last and not plain.levers.fused_encode
    assert fast.levers.channels_last == (levers["channels_last"] == "on")
    content, style = _fixed_batch(plain)
    plain_values, plain_grads = _grads_after_step(plain, content, style)
    fast_values, fast_grads = _grads_after_step(fast, content, style)
    for key in ("total", "global_style", "a2k"):
        assert fast_values[key] == pytest.approx(plain_values[key], rel=1e-4), key
    assert plain_grads.keys() == fast_grads.keys() and len(plain_grads) > 10
    # Against the gradient's overall scale: some tensors' true gradient is ~0 (a key bias shifts every score of
    # a query alike, which softmax ignores), so their own relative error is pure fp32 rounding noise.
    flat = torch.cat([g.flatten() for g in plain_grads.values()])
    flat_fast = torch.cat([fast_grads[n].flatten() for n in plain_grads])
    # channels_last runs other oneDNN kernels: ~1e-3 relative, and an argmax of the progressive attention's
    # block matching can flip between near-tied blocks. A wrong step would be off by O(1).
    assert (flat_fast - flat).norm() / flat.norm() < 1e-2
    assert torch.nn.functional.cosine_similarity(flat_fast, flat, dim=0) > 0.9999
    for name, grad in plain_grads.items():
        assert (fast_grads[name] - grad).abs().max() <= 1e-2 * flat.abs().max() + 2e-2 * grad.abs().max(), name


@pytest.mark.parametrize("bf16_trained", ["off", "on"])
def test_bf16_stays_close_to_fp32(tmp_path: Path, data_dirs: tuple[str, str], bf16_trained: str) -> None:
    # "off": only the frozen networks in bf16; "on": the trained A2K modules and decoder too.
    plain = Trainer(_config(tmp_path / "plain", data_dirs))
    bf16 = Trainer(_config(tmp_path / "bf16", data_dirs, bf16="on", bf16_trained=bf16_trained))
    assert bf16.levers.bf16 and not plain.levers.bf16
    assert bf16.levers.bf16_trained == (bf16_trained == "on") and not plain.levers.bf16_trained
    content, style = _fixed_batch(plain)
    seen: list[torch.dtype] = []  # what the trained decoder computed in during the step
    bf16.net.decoder.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    plain_values, plain_grads = _grads_after_step(plain, content, style)
    bf16_values, bf16_grads = _grads_after_step(bf16, content, style)
    assert seen == [torch.bfloat16 if bf16_trained == "on" else torch.float32]
    assert all(p.dtype == torch.float32 for p in bf16.params)  # master weights stay float32 either way
    assert all(g.dtype == torch.float32 for g in bf16_grads.values())
    # bf16 keeps 8 bits of mantissa: the loss terms agree to a few percent, gradients point the same way.
    for key in ("total", "global_style", "a2k"):
        assert bf16_values[key] == pytest.approx(plain_values[key], rel=0.05), key
    flat = torch.cat([g.flatten() for g in plain_grads.values()])
    flat_bf16 = torch.cat([bf16_grads[n].flatten() for n in plain_grads])
    assert torch.nn.functional.cosine_similarity(flat, flat_bf16, dim=0) > 0.95


def test_auto_levers_are_resolved_and_recorded(tmp_path: Path, data_dirs: tuple[str, str]) -> None:
    trainer = Trainer(_config(tmp_path / "auto", data_dirs, channels_last="auto", bf16="auto", bf16_trained="auto"))
    assert trainer.levers.bf16 == has_native_bf16()
    described = trainer.levers.describe()
    assert "channels_last: step fwd+bwd" in described and "bf16: CPU" in described
    assert trainer.levers.bf16_trained == (trainer.levers.bf16 and has_native_bf16())
    assert "bf16_trained: " in described
    state = torch.load(trainer.save_checkpoint(), weights_only=False)
    assert state["levers"] == described


@pytest.mark.parametrize("bf16", ["on", "off"])
def test_channels_last_is_measured_on_the_whole_step_at_its_precision(bf16: str) -> None:
    from training import levers as train_module

    seen: list[tuple[bool, bool]] = []
    # per layout: a slow warm-up (left out), then three rounds with one outlier each (the median ignores it)
    times = {False: iter([9.0, 1.0, 1.0, 0.1]), True: iter([9.0, 0.5, 5.0, 0.5])}

    def fake_time(levers: train_module.StepLevers) -> float:
        seen.append((levers.channels_last, levers.bf16))
        return next(times[levers.channels_last])  # channels_last twice as fast

    cfg = TrainConfig(run_dir="x", crop_size=16, batch_size=1, channels_last="auto", bf16=bf16, bf16_trained="off")
    levers = train_module.choose_levers(cfg, torch.device("cpu"), fake_time)
    # a warm-up of each layout, then three rounds taking turns; every one at the step's own precision
    assert seen == [(False, bf16 == "on"), (True, bf16 == "on")] * 4 and levers.channels_last
    assert "channels_last: step fwd+bwd 1.00 s -> 0.50 s measured" in levers.describe()
    assert levers.describe().endswith("measured under bf16)" if bf16 == "on" else "measured)")
    even = train_module.choose_levers(cfg, torch.device("cpu"), lambda lv: 1.0 if lv.channels_last else 1.02)
    assert not even.channels_last  # within 5%: the layout stays contiguous


def test_the_layout_measurement_leaves_weights_optimizer_and_rng_alone(tmp_path: Path, data_dirs: tuple[str, str],
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      request: pytest.FixtureRequest) -> None:
    before = torch.get_num_threads()
    request.addfinalizer(lambda: torch.set_num_threads(before))
    real = Trainer.time_dry_step
    threads: list[int] = []

    def contiguous_wins(self: Trainer, levers: StepLevers) -> float:
        threads.append(torch.get_num_threads())
        return real(self, levers) * (10.0 if levers.channels_last else 1.0)  # the real dry step runs each time

    monkeypatch.setattr(Trainer, "time_dry_step", contiguous_wins)
    torch.set_num_threads(2)
    cfg = _config(tmp_path / "auto", data_dirs, channels_last="auto", bf16="off", bf16_trained="off")
    measured = Trainer(replace(cfg, threads=None, thread_tuning=True))
    assert len(threads) == 8 and set(threads) == {2}  # timed at the untuned thread count, not the tuner's first
    assert not measured.levers.channels_last
    rng_after_measuring = torch.get_rng_state()
    plain = Trainer(_config(tmp_path / "off", data_dirs, channels_last="off", bf16="off", bf16_trained="off"))
    assert torch.equal(rng_after_measuring, torch.get_rng_state())  # both runs start from the same RNG
    for name, tensor in trainable_state_dict(plain.net).items():
        torch.testing.assert_close(trainable_state_dict(measured.net)[name], tensor, rtol=0, atol=0)
    assert all(p.grad is None for p in measured.params) and not measured.optimizer.state
    conv = next(m for m in measured.net.decoder.modules() if isinstance(m, torch.nn.Conv2d))
    # the chosen layout, not channels_last, the last one timed
    assert conv.weight.is_contiguous() and not conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_unknown_lever_value_is_rejected() -> None:
    with pytest.raises(ValueError, match="channels_last must be one of auto, on, off"):
        TrainConfig(run_dir="x", channels_last="yes")
    with pytest.raises(ValueError, match="bf16_trained must be one of auto, on, off"):
        TrainConfig(run_dir="x", bf16_trained="fp16")


def test_deadline_leaves_room_for_a_step_and_the_checkpoint() -> None:
    assert not Deadline(None).must_stop()
    deadline = Deadline(100.0)
    deadline.observe_step(10.0)
    assert not deadline.must_stop()
    deadline.observe_step(60.0)  # the slowest recent step counts: this machine's speed drifts
    assert deadline.must_stop()
    assert Deadline(0.0).must_stop()


def test_time_budget_stops_cleanly_with_a_checkpoint(tmp_path: Path, data_dirs: tuple[str, str]) -> None:
    trainer = Trainer(_config(tmp_path / "budget", data_dirs, iters=50, ckpt_every=0))
    done = trainer.train(time_budget=0.5)
    assert 1 <= done < 50
    state = torch.load(tmp_path / "budget/checkpoints/last.pt", weights_only=False)
    assert state["iteration"] == trainer.iteration == done


def test_stop_request_ends_after_the_current_step(tmp_path: Path, data_dirs: tuple[str, str]) -> None:
    trainer = Trainer(_config(tmp_path / "stop", data_dirs, iters=50, ckpt_every=0))
    trainer.stop_requested = True
    assert trainer.train() == 1
    assert (tmp_path / "stop/checkpoints/last.pt").exists()


def test_init_from_release_weights_continues_the_count_with_a_fresh_optimizer(
        tmp_path: Path, data_dirs: tuple[str, str]) -> None:
    from training.export import export_release

    first = Trainer(_config(tmp_path / "first", data_dirs, iters=2))
    first.train()
    release = tmp_path / "weights" / "r.pt"
    export_release(tmp_path / "first/checkpoints/last.pt", release, version="r")
    second = Trainer(_config(tmp_path / "second", data_dirs, iters=4), init_weights=release)
    assert second.iteration == 2 and "fresh optimizer" in (second.init_note or "")
    assert not second.optimizer.state  # nothing carried over from the first run's Adam
    for name, tensor in trainable_state_dict(first.net).items():  # fp16 round trip of the release file
        torch.testing.assert_close(trainable_state_dict(second.net)[name], tensor, atol=2e-3, rtol=2e-3)
    second.train()
    rows = list(csv.DictReader((tmp_path / "second/log.csv").open()))
    assert [int(r["iteration"]) for r in rows] == [2, 3]
    state = torch.load(tmp_path / "second/checkpoints/last.pt", weights_only=False)
    assert state["init_note"] == second.init_note


def test_train_from_a_pack_equals_training_from_folders(tmp_path: Path, data_dirs: tuple[str, str]) -> None:
    from training.pack import build_pack

    pack = build_pack(tmp_path / "pack", (data_dirs[0],), (data_dirs[1],), load_size=72)
    folders = Trainer(_config(tmp_path / "folders", data_dirs, iters=2))
    packed = Trainer(_config(tmp_path / "packed", data_dirs, iters=2, pack=str(pack)))
    folders.train()
    packed.train()
    for name, tensor in trainable_state_dict(folders.net).items():
        assert torch.equal(tensor, trainable_state_dict(packed.net)[name]), name


def test_warmup_ramps_the_lr_after_a_fresh_optimizer_only() -> None:
    cfg = TrainConfig(run_dir="x", iters=1000, lr=1e-3, warmup_iters=10)
    assert learning_rate(500, cfg) == learning_rate(500, cfg, None)  # resumed Adam: no warm-up
    assert learning_rate(100, cfg, fresh_optimizer_at=100) == pytest.approx(1e-4)
    assert learning_rate(104, cfg, fresh_optimizer_at=100) == pytest.approx(5e-4)
    assert learning_rate(109, cfg, fresh_optimizer_at=100) == pytest.approx(1e-3)
    assert learning_rate(700, cfg, fresh_optimizer_at=100) == learning_rate(700, cfg)  # schedule unchanged


def test_thread_tuner_keeps_the_faster_count_and_probes_again() -> None:
    threads = torch.get_num_threads()
    tuner = ThreadTuner((1, 2), probe=2, period=3)
    seen = []
    for seconds in (1.0, 1.2, 3.0, 2.8):  # one thread probed first, then two; one thread is faster
        seen.append(torch.get_num_threads())
        tuner.observe(seconds)
    assert seen == [1, 1, 2, 2] and tuner.best == 1 and torch.get_num_threads() == 1
    for _ in range(3):
        tuner.observe(1.0)
    assert torch.get_num_threads() == 1 and tuner.phase_step == 0  # a new probe round starts
    torch.set_num_threads(threads)


def test_a_paused_step_is_kept_out_of_thread_tuning(tmp_path: Path, data_dirs: tuple[str, str]) -> None:
    trainer = Trainer(_config(tmp_path / "paused", data_dirs, iters=2, ckpt_every=0, threads=None,
                              thread_tuning=True))
    assert trainer.thread_tuner is not None or len(os.sched_getaffinity(0)) == 1
    if trainer.thread_tuner is None:
        pytest.skip("one core: no thread tuning")
    real_step = trainer.step

    def paused_step(content: torch.Tensor, style: torch.Tensor) -> dict[str, float]:
        values = real_step(content, style)
        trainer.resumed_during_step = True  # what training.campaign's SIGCONT handler does
        return values

    trainer.step = paused_step  # type: ignore[method-assign]
    threads = torch.get_num_threads()
    trainer.train()
    assert trainer.thread_tuner.phase_step == 0 and not trainer.resumed_during_step
    torch.set_num_threads(threads)
