"""Train StyA2K (or the all-to-all ablation / AdaIN baseline) reproducibly on CPU or GPU.

Recipe (paper section 4.1 and the authors' code): batch 8, Adam(0.9, 0.999), lr 2e-4 constant for the
first 40% of the iterations then linearly decayed to 0, loss = 10 * global style + 1.25 * A2K*, frozen
VGG-19. A run folder holds ``checkpoints/`` (full training state), ``log.csv``, ``loss_curves.png``
and ``samples/`` (fixed content x style grids). This module is the trainer and its command; the run's config
and its options are in training.config, the lr schedule in training.schedule, the step's speed levers and thread
tuner in training.levers, the time budget in training.deadline, the loss terms in training.losses.

    python -m training.train --run-dir runs/a2k --iters 2000 --crop-size 128 --load-size 256
    python -m training.train --run-dir runs/a2k --iters 4000 --resume        # continue / extend
    python -m training.export --checkpoint runs/a2k/checkpoints/last.pt --out weights/stya2k-v0.6-cpu.pt
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import sys
import time
from contextlib import AbstractContextManager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from model.checkpoint import (
    TRAIN_STATE_FORMAT,
    TRAIN_STATE_VERSION,
    atomic_save,
    is_train_state,
    load_checkpoint,
    load_trainable_state,
    trainable_state_dict,
)
from model.config import ModelConfig
from model.hardware import select_device, start_command
from model.progress import Progress
from model.stya2k import StyA2K
from training.config import TrainConfig, add_config_arguments, config_values
from training.data import (
    ContentStylePairs,
    CropConfig,
    PairDataConfig,
    StepSampler,
    list_images,
    load_fixed_images,
)
from training.deadline import Deadline
from training.export import export_release
from training.levers import StepLevers, ThreadTuner, autocast_for, choose_levers
from training.losses import LossConfig, LossTerms, StyleTransferLoss, weigh
from training.pack import PackedPairs
from training.plotting import image_grid
from training.runlog import LOG_NAME, CsvLog, plot_log
from training.schedule import learning_rate

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def loss_kind_for(arch: str) -> str:
    """AdaIN has no attention module to match, so it trains with the AdaIN content + style losses."""
    return "adain" if arch == "adain" else "a2k"


def step_label(loss: float, sec_per_iter: float) -> str:
    """What a progress line says about the last step: its loss and speed."""
    rate = 1.0 / sec_per_iter if sec_per_iter > 0 else 0.0
    return f"loss {loss:.4f} {rate:.3f} it/s ({sec_per_iter:.2f} s/it)"


class Trainer:
    """Owns the network, optimizer, data and run folder of one training run."""

    def __init__(self, cfg: TrainConfig, resume: str | Path | None = None,
                 init_weights: str | Path | None = None, init_iteration: int | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.sample_dir = self.run_dir / "samples"
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = select_device(cfg.device)
        seed_everything(cfg.seed)
        self.net = StyA2K(ModelConfig(arch=cfg.arch)).to(self.device)
        self.net.train()
        self.net.encoder.eval()
        self.levers = StepLevers()  # resolved below, once the loss and optimizer exist to time a step with
        self.loss_fn = StyleTransferLoss(self._loss_encoder, LossConfig(kind=loss_kind_for(cfg.arch),
                                                                        **cfg.loss_weights()))
        self.loss_weights = self.loss_fn.config.weights()  # {term: weight}: the step weights the terms it gets
        self.params = [p for p in self.net.trainable_parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.lr, betas=(0.9, 0.999))
        self.iteration = 0
        self.wall_s = 0.0
        self.init_note: str | None = None
        self.stop_requested = False  # set from a signal handler: stop cleanly after the current step
        self.fresh_optimizer_at: int | None = None
        self.resumed_during_step = False  # set by a SIGCONT handler (training.campaign): the step was paused
        self.resumed_config: dict[str, Any] | None = None  # the train_config of the checkpoint resumed from
        saved_levers: str | None = None
        # Where the run starts is settled before the levers are measured, so a refusal costs no dry steps.
        if resume is not None:
            saved_levers = self._restore(Path(resume))
        elif init_weights is not None:
            self._init_from_release(Path(init_weights), init_iteration)
        if self.iteration < cfg.schedule_start:
            source = Path(init_weights).name if init_weights is not None and resume is None else "a fresh run"
            raise ValueError(f"{source} is at iteration {self.iteration}, before this run's schedule start "
                             f"{cfg.schedule_start}: a later phase starts from the earlier phase's final weights "
                             "(export them first, python -m training.export, and pass them as --init-weights)")
        # Measured at the thread count the step gets without tuning (all cores), then the tuner takes over.
        self.levers = choose_levers(cfg, self.device, self.time_dry_step)
        self._use_layout(self.levers)
        logger.info("training step: %s", self.levers.describe())
        if resume is not None:
            self._note_lever_change(saved_levers)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.thread_tuner = (ThreadTuner((1, cores)) if cfg.thread_tuning and self.device.type == "cpu"
                             and cores > 1 and not cfg.threads else None)
        self.data = self._dataset()
        self.log = CsvLog(self.run_dir / LOG_NAME,
                          self.iteration - 1 if resume is not None or init_weights is not None else None)
        self.sample_contents, self.sample_styles = self._fixed_sample_set()

    def _dataset(self) -> ContentStylePairs | PackedPairs:
        cfg = self.cfg
        if cfg.pack:
            return PackedPairs(cfg.pack, cfg.crop_size, seed=cfg.seed, hflip=cfg.hflip, load_size=cfg.load_size)
        return ContentStylePairs(
            PairDataConfig(
                content_dirs=cfg.content_dirs,
                style_dirs=cfg.style_dirs,
                crop=CropConfig(load_size=cfg.load_size, crop_size=cfg.crop_size, hflip=cfg.hflip),
                seed=cfg.seed,
                balance_style_dirs=cfg.balance_style_dirs,
            )
        )

    def _encoder_autocast(self) -> AbstractContextManager[Any]:
        # On CPU the frozen networks run in bf16 with this lever alone (the trained parts have their own).
        return autocast_for(self.device, self.levers.bf16 and self.device.type == "cpu")

    def _trained_autocast(self) -> AbstractContextManager[Any]:
        # CPU: the A2K modules and decoder compute in bf16; the optimizer still sees fp32 weights and gradients.
        # (On CUDA the step's own autocast covers them.)
        return autocast_for(self.device, self.levers.bf16_trained and self.device.type == "cpu")

    def _loss_encoder(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss network (the frozen VGG, with gradients to its input) under the encoder's levers."""
        if self.levers.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        with self._encoder_autocast():
            feats = self.net.encoder(image)
        return {k: v.float() for k, v in feats.items()}

    def _note_lever_change(self, saved: str | None) -> None:
        """Say so when a resumed run computes differently than the run that wrote the checkpoint (a new machine,
        a new lever): the loss is the same, but e.g. bf16 rounding is not, and the log should show where."""
        flags = self.levers.describe().split(" (")[0]
        if saved is not None and saved.split(" (")[0] != flags:
            logger.warning("step levers differ from the checkpoint's: %s -> %s", saved.split(" (")[0], flags)

    # ---------- checkpoints ----------
    def _restore(self, path: Path) -> str | None:
        """Continue the run of checkpoint ``path``; returns the levers it was trained with (its ``describe()``)."""
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not is_train_state(state):
            raise RuntimeError(f"{path} is not a StyA2K training checkpoint (release files cannot resume)")
        saved_arch = state["train_config"]["arch"]
        if saved_arch != self.cfg.arch:
            raise RuntimeError(f"{path} was trained with --arch {saved_arch}, not {self.cfg.arch}")
        saved_start = int(state["train_config"].get("schedule_start", 0))
        if saved_start != self.cfg.schedule_start:
            # --iters may grow on a resume; moving the schedule's start would silently change every later lr
            raise ValueError(f"{path} runs an lr schedule that starts at iteration {saved_start}, this run asks "
                             f"--schedule-start {self.cfg.schedule_start}: resume with the run's own value")
        self.resumed_config = dict(state["train_config"])
        load_trainable_state(self.net, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = int(state["iteration"])
        self.wall_s = float(state.get("wall_s", 0.0))
        self.init_note = state.get("init_note")
        self.fresh_optimizer_at = state.get("fresh_optimizer_at")
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        logger.info("resumed %s at iteration %d", path, self.iteration)
        return state.get("levers")

    def _init_from_release(self, path: Path, iteration: int | None) -> None:
        """Start from release weights with a fresh optimizer; the iteration count continues theirs."""
        release = load_checkpoint(path, map_location="cpu")
        if release.config.arch != self.cfg.arch:
            raise RuntimeError(f"{path} holds --arch {release.config.arch} weights, not {self.cfg.arch}")
        load_trainable_state(self.net, trainable_state_dict(release))
        self.iteration = int(iteration if iteration is not None else release.meta.get("iterations", 0))
        self.wall_s = float(release.meta.get("train_wall_s", 0.0))
        self.fresh_optimizer_at = self.iteration
        self.init_note = (f"initialised from {path.name} (iteration {self.iteration}) with a fresh optimizer: "
                          "no training state was found")
        logger.info(self.init_note)

    def save_checkpoint(self) -> Path:
        state = {
            "format": TRAIN_STATE_FORMAT,
            "version": TRAIN_STATE_VERSION,
            "iteration": self.iteration,
            "wall_s": self.wall_s,
            "train_config": asdict(self.cfg),
            "model_config": self.net.config.to_dict(),
            "data": self.data.summary(),
            "model": trainable_state_dict(self.net),
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "levers": self.levers.describe(),
            "init_note": self.init_note,
            "fresh_optimizer_at": self.fresh_optimizer_at,
        }
        path = self.ckpt_dir / f"iter_{self.iteration:07d}.pt"
        atomic_save(state, path)
        atomic_save(state, self.ckpt_dir / "last.pt")
        self._prune_checkpoints()
        return path

    def _prune_checkpoints(self) -> None:
        numbered = sorted(self.ckpt_dir.glob("iter_*.pt"))
        for old in numbered[: max(0, len(numbered) - self.cfg.keep_checkpoints)]:
            old.unlink(missing_ok=True)

    # ---------- samples ----------
    def _fixed_sample_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed (seed-chosen) set of content and style images, centre crops at the crop size."""
        rng = random.Random(f"{self.cfg.seed}-samples")
        all_contents = [Path(f) for f in self.data.content.files]
        contents = rng.sample(all_contents, min(self.cfg.sample_contents, len(all_contents)))
        all_styles = sorted(Path(f) for g in self.data.style_groups for f in g.files)
        styles = rng.sample(all_styles, min(self.cfg.sample_styles, len(all_styles)))
        size = self.cfg.crop_size
        return load_fixed_images(contents, size), load_fixed_images(styles, size)

    @torch.no_grad()
    def write_samples(self) -> Path:
        self.net.eval()
        n_c, n_s = self.sample_contents.shape[0], self.sample_styles.shape[0]
        content = self.sample_contents.repeat_interleave(n_s, dim=0).to(self.device)  # (Nc*Ns, 3, S, S)
        style = self.sample_styles.repeat(n_c, 1, 1, 1).to(self.device)  # (Nc*Ns, 3, S, S)
        outputs = []
        with autocast_for(self.device, self.device.type == "cuda" and self.levers.bf16):
            for start in range(0, content.shape[0], self.cfg.batch_size):
                end = start + self.cfg.batch_size
                outputs.append(self.net.stylize(content[start:end], style[start:end]).float().cpu())
        self.net.train()
        self.net.encoder.eval()
        path = self.sample_dir / f"iter_{self.iteration:07d}.png"
        image_grid(
            self.sample_contents, self.sample_styles, torch.cat(outputs), path,
            caption=f"{self.cfg.arch} iteration {self.iteration}",
        )
        return path

    # ---------- training ----------
    def _loader(self, stop: int) -> DataLoader:
        sampler = StepSampler(self.iteration * self.cfg.batch_size, stop * self.cfg.batch_size)
        return DataLoader(
            self.data,
            batch_size=self.cfg.batch_size,
            sampler=sampler,
            num_workers=self.cfg.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if self.cfg.workers > 0 else None,
            drop_last=True,
        )

    def features(self, content: torch.Tensor, style: torch.Tensor) -> tuple[dict[str, torch.Tensor],
                                                                            dict[str, torch.Tensor]]:
        """Every tap of content and style through the frozen encoder (`StyA2K.encode_pair`) under the levers,
        as fp32: {tap: (B, C, h, w)} each."""
        with self._encoder_autocast():
            c_feats, s_feats = self.net.encode_pair(content, style, fused=self.levers.fused_encode)
        return {k: v.float() for k, v in c_feats.items()}, {k: v.float() for k, v in s_feats.items()}

    def step(self, content: torch.Tensor, style: torch.Tensor) -> dict[str, float]:
        """One optimisation step on a batch; returns the loss terms as floats."""
        lr = learning_rate(self.iteration, self.cfg, self.fresh_optimizer_at)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        terms = self._forward_backward(content, style)
        self.optimizer.step()
        values = terms.as_dict()
        values["lr"] = lr
        return values

    def time_dry_step(self, levers: StepLevers) -> float:
        """Seconds of one step under ``levers`` without the optimizer update (forward, both losses, backward) on
        a fixed random batch; the gradients are dropped, so the weights and Adam stay as they were. The layout
        stays ``levers``' until `_use_layout` sets the chosen one."""
        self.levers = levers
        self._use_layout(levers)
        gen = torch.Generator().manual_seed(0)  # the global RNG, and so the run, stays untouched
        shape = (self.cfg.batch_size, 3, self.cfg.crop_size, self.cfg.crop_size)
        content, style = torch.rand(shape, generator=gen), torch.rand(shape, generator=gen)
        self._synchronize()
        t0 = time.perf_counter()
        self._forward_backward(content, style)
        self._synchronize()
        seconds = time.perf_counter() - t0
        self.optimizer.zero_grad(set_to_none=True)
        return seconds

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _use_layout(self, levers: StepLevers) -> None:
        self.net.to(memory_format=torch.channels_last if levers.channels_last else torch.contiguous_format)

    def _forward_backward(self, content: torch.Tensor, style: torch.Tensor) -> LossTerms:
        """Forward, both losses and backward on a batch: the step's work up to the optimizer update."""
        content = content.to(self.device, non_blocking=True)  # (B, 3, S, S)
        style = style.to(self.device, non_blocking=True)  # (B, 3, S, S)
        if self.levers.channels_last:
            content = content.contiguous(memory_format=torch.channels_last)
            style = style.contiguous(memory_format=torch.channels_last)
        with autocast_for(self.device, self.device.type == "cuda" and self.levers.bf16):
            c_feats, s_feats = self.features(content, style)
            with self._trained_autocast():
                out = self.net.decode(self.net.transfer(c_feats, s_feats))  # (B, 3, S, S) unclamped
            # float32 into the loss: its statistics and A2K targets are fp32 work on CPU (the loss network casts
            # itself; on CUDA, where the whole step is under autocast, the cast back to bf16 is exact)
            terms = weigh(self.loss_fn.terms(out.float(), c_feats, s_feats), self.loss_weights)
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        return terms

    def train(self, stop_at: int | None = None, time_budget: float | None = None) -> int:
        """Run until ``cfg.iters`` (or ``stop_at``, to split a run), or until ``time_budget`` seconds from now
        would be exceeded by one more iteration plus the final checkpoint; returns the iterations done."""
        stop = min(self.cfg.iters, stop_at or self.cfg.iters)
        if self.iteration >= stop:
            logger.info("nothing to do: already at iteration %d of %d", self.iteration, self.cfg.iters)
            return 0
        deadline = Deadline(time_budget)
        if self.iteration == 0 and self.cfg.sample_every > 0:
            self.write_samples()
        progress = Progress(self.cfg.iters, sys.stderr, start=self.iteration, every=self.cfg.log_every, logger=logger)
        done = 0
        tick = time.perf_counter()
        for content, style in self._loader(stop):
            values = self.step(content, style)
            now = time.perf_counter()
            sec_per_iter = now - tick
            tick = now
            self.wall_s += sec_per_iter
            if not self.resumed_during_step:  # a SIGSTOP pause is not the step's speed
                deadline.observe_step(sec_per_iter)
                if self.thread_tuner is not None:
                    self.thread_tuner.observe(sec_per_iter)
            self.resumed_during_step = False
            if not math.isfinite(values["total"]):
                raise FloatingPointError(f"loss became {values['total']} at iteration {self.iteration}")
            row = {"iteration": self.iteration, "sec_per_iter": sec_per_iter, "wall_s": self.wall_s, **values}
            self.log.append(row)
            progress.step(step_label(values["total"], sec_per_iter))
            self.iteration += 1
            done += 1
            if self.cfg.ckpt_every > 0 and self.iteration % self.cfg.ckpt_every == 0:
                t0 = time.perf_counter()
                self.save_checkpoint()
                plot_log(self.log.rows, self.run_dir / "loss_curves.png", f"{self.cfg.arch} training losses")
                deadline.observe_checkpoint(time.perf_counter() - t0)
            if self.cfg.sample_every > 0 and self.iteration % self.cfg.sample_every == 0:
                self.write_samples()
            if self.stop_requested:
                logger.info("stop requested: stopping at iteration %d", self.iteration)
                break
            if deadline.must_stop():
                logger.info("time budget: stopping at iteration %d with %.0f s left", self.iteration,
                            deadline.remaining())
                break
            tick = time.perf_counter()  # checkpoint/sample time is not training time
        if self.cfg.ckpt_every <= 0 or self.iteration % self.cfg.ckpt_every != 0:
            self.save_checkpoint()
        plot_log(self.log.rows, self.run_dir / "loss_curves.png", f"{self.cfg.arch} training losses")
        if self.cfg.sample_every > 0 and self.iteration % self.cfg.sample_every != 0:
            self.write_samples()
        return done


# ---------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``stya2k train`` / ``python -m training.train``: TrainConfig's options (training.config), then
    those of this command alone (how the run starts, when it stops, what it exports)."""
    add_config_arguments(parser)
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="stop cleanly with a checkpoint before this many seconds have passed")
    parser.add_argument("--init-weights", default=None, metavar="PT",
                        help="start from release weights with a fresh optimizer (no training state needed)")
    parser.add_argument("--init-iteration", type=int, default=None,
                        help="iteration count to continue from with --init-weights (default: the file's meta)")
    parser.add_argument("--resume", nargs="?", const="last", default=None, metavar="CKPT",
                        help="continue from CKPT (default RUN_DIR/checkpoints/last.pt); --iters may grow")
    parser.add_argument("--export", default=None, metavar="PATH",
                        help="after training, write fp16 release weights + MANIFEST line")
    parser.add_argument("--manifest", default=None, help="manifest (default: next to PATH)")
    parser.add_argument("--version-tag", default=None, help="version string stored in the exported weights")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**config_values(args))


def run(args: argparse.Namespace) -> int:
    """Entry point shared by ``stya2k train`` and ``python -m training.train``; returns an exit code."""
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    for folder in () if cfg.pack else (*cfg.content_dirs, *cfg.style_dirs):
        if not list_images([folder]):
            logger.error("no images in %s", folder)
            return 2
    resume = None
    if args.resume is not None:
        resume = Path(cfg.run_dir) / "checkpoints" / "last.pt" if args.resume == "last" else Path(args.resume)
        if not resume.exists():
            logger.error("cannot resume: %s does not exist", resume)
            return 2
    if resume is not None and args.init_weights:
        logger.error("--resume and --init-weights exclude each other")
        return 2
    try:
        trainer = Trainer(cfg, resume=resume, init_weights=args.init_weights, init_iteration=args.init_iteration)
    except ValueError as exc:  # e.g. a --schedule-start that does not fit where the run starts
        logger.error("cannot start training: %s", exc)
        return 2
    trainer.train(time_budget=args.time_budget)
    if args.export:
        sha = export_release(
            trainer.ckpt_dir / "last.pt", args.export, manifest=args.manifest, version=args.version_tag
        )
        logger.info("exported %s (sha256 %s)", args.export, sha)
    return 0


def main(argv: list[str] | None = None) -> int:
    start_command(__name__)  # before any tensor: the CPU allocator reads the huge-page switch once
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
