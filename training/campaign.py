"""The CPU training campaign: one long A2K run continued across sessions, from a state folder outside the tree.

Each session runs ``python -m training.campaign --time-budget SECONDS`` in the background. The state folder
(default ``<cache>/campaign-a2k-128``, see `model.checkpoint.default_cache_dir`) holds the run: full checkpoints with
Adam and RNG state, ``log.csv``, samples, and ``history.jsonl`` with one line per session (start and end
iteration, how it started, the step's levers, seconds per iteration). When the folder is gone, the campaign
continues from the newest committed weights with a fresh optimizer, and both the log and the history say so.

The lr schedule is that of one run of ``--iters`` (default 12,000) iterations: constant for 40%, then linear to
0, evaluated at the campaign's iteration count, so a resume never restarts or stretches it.

    python -m training.campaign --time-budget 9000          # train for at most 2.5 h, then checkpoint and stop
    kill -STOP <pid> / kill -CONT <pid>                  # pause while benchmarking (a paused step's time
                                                         # is kept out of the thread tuning and deadline)
    kill -INT <pid>                                      # stop cleanly now (checkpoint at the next step)

The 256 px phase that follows is a second campaign in its own state folder (``campaign-a2k-256``; a state
folder never continues a run at another crop size), started from the 128 px phase's final weights with its own
schedule over the iterations after them (``--schedule-start``, kept by every resume of that phase):

    python -m training.campaign --time-budget 9000 --crop-size 256 --schedule-start 12000 --iters 14000 --lr 1e-4
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from model.checkpoint import default_cache_dir, default_weights_path
from model.hardware import start_command
from training.config import TrainConfig, add_config_arguments, config_values
from training.data import DEFAULT_CONTENT_DIRS, DEFAULT_STYLE_DIRS
from training.losses import LossWeights
from training.pack import build_pack
from training.schedule import schedule_constant_end
from training.train import Trainer

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]

# The TrainConfig options a campaign takes (training.config generates them; the loss weights all of them), with
# the campaign's own defaults and words; the rest of the run's config is fixed by `campaign_config`.
CAMPAIGN_OPTIONS = ("content_dirs", "style_dirs", "iters", "schedule_start", "lr", "crop_size", "load_size",
                    "batch_size", "threads", "warmup_iters", "ckpt_every", "sample_every", "seed",
                    *(f.name for f in fields(LossWeights)))
CAMPAIGN_DEFAULTS = {"iters": 12_000, "crop_size": 128, "load_size": 256, "warmup_iters": 50, "ckpt_every": 25,
                     "sample_every": 250}
CAMPAIGN_HELP = {
    "iters": "iteration at which the lr schedule ends",
    "schedule_start": "where the lr schedule starts: a later phase (256 px) continues the iteration count",
    "threads": "torch threads (default: measured, 1 vs all cores, again every 50 steps)",
    "warmup_iters": "linear lr warm-up after starting from release weights with a fresh optimizer",
}


def default_state_dir(crop_size: int) -> Path:
    if os.environ.get("STYA2K_CAMPAIGN_DIR"):
        return Path(os.environ["STYA2K_CAMPAIGN_DIR"])
    return default_cache_dir() / f"campaign-a2k-{crop_size}"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def append_history(state_dir: Path, record: dict[str, object]) -> None:
    with (state_dir / "history.jsonl").open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def read_history(state_dir: Path) -> list[dict[str, object]]:
    path = state_dir / "history.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def lr_schedule_text(cfg: TrainConfig) -> str:
    start = f" from {cfg.schedule_start}" if cfg.schedule_start else ""
    return f"constant {cfg.lr:g}{start} to {schedule_constant_end(cfg)}, linear to 0 at {cfg.iters}"


def campaign_config(args: argparse.Namespace, state_dir: Path, pack: Path | None) -> TrainConfig:
    return TrainConfig(
        **config_values(args, CAMPAIGN_OPTIONS),
        run_dir=str(state_dir),
        workers=0 if pack else 1,
        keep_checkpoints=4,
        log_every=10,
        pack=str(pack) if pack else None,
        thread_tuning=args.threads is None,
    )


def resolve_pack(args: argparse.Namespace) -> Path | None:
    if args.no_pack:
        return None
    pack = Path(args.pack) if args.pack else default_cache_dir() / f"pack-{args.load_size}"
    if not (pack / "index.json").is_file():
        logger.info("no data pack at %s: building it once (decode + resize every image)", pack)
        build_pack(pack, tuple(args.content_dirs or DEFAULT_CONTENT_DIRS),
                   tuple(args.style_dirs or DEFAULT_STYLE_DIRS), args.load_size)
    return pack


def start_trainer(cfg: TrainConfig, state_dir: Path, init_weights: str | None) -> tuple[Trainer, str]:
    """Resume the state folder's run, or start one from release weights; returns it and how it started."""
    last = state_dir / "checkpoints" / "last.pt"
    if last.is_file():
        trainer = Trainer(cfg, resume=last)
        saved_crop = (trainer.resumed_config or {}).get("crop_size", cfg.crop_size)
        if saved_crop != cfg.crop_size:
            # one state folder per phase: a 256 px phase must not continue (and overwrite) the 128 px run
            raise ValueError(f"{state_dir} holds a run at {saved_crop} px crops, this one asks {cfg.crop_size}: "
                             "give each phase its own --state-dir")
        return trainer, f"resumed {last}"
    weights = Path(init_weights) if init_weights else default_weights_path()
    trainer = Trainer(cfg, init_weights=weights)
    how = f"no training state in {state_dir}: {trainer.init_note}"
    logger.warning(how)
    return trainer, how


def run(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir(args.crop_size)
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        cfg = campaign_config(args, state_dir, None)  # checked before the pack is built
        pack = resolve_pack(args)
        cfg = campaign_config(args, state_dir, pack)
        trainer, how = start_trainer(cfg, state_dir, args.init_weights)
    except ValueError as exc:  # e.g. a later phase's --schedule-start that does not fit where it would start
        logger.error("cannot start the campaign: %s", exc)
        return 2

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal %d: stopping after this step", signum)
        trainer.stop_requested = True

    def note_resume(_signum: int, _frame: FrameType | None) -> None:
        trainer.resumed_during_step = True

    signal.signal(signal.SIGCONT, note_resume)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    start_iter, start_wall, t0 = trainer.iteration, trainer.wall_s, time.monotonic()
    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        trainer.train(time_budget=args.time_budget)
    finally:
        done = trainer.iteration - start_iter
        train_s = trainer.wall_s - start_wall
        append_history(state_dir, {
            "started": started,
            "ended": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "how": how,
            "commit": git_commit(),
            "start_iteration": start_iter,
            "end_iteration": trainer.iteration,
            "iterations": done,
            "train_s": round(train_s, 1),
            "elapsed_s": round(time.monotonic() - t0, 1),
            "sec_per_iter": round(train_s / done, 3) if done else None,
            "levers": trainer.levers.describe(),
            "lr_schedule": lr_schedule_text(cfg),
            "pack": cfg.pack,
        })
    logger.info("campaign at iteration %d (%d this session)", trainer.iteration, done)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.campaign", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--time-budget", type=float, required=True, metavar="SECONDS",
                        help="stop cleanly with a checkpoint before this many seconds")
    parser.add_argument("--state-dir", default=None,
                        help="training state folder (default $STYA2K_CAMPAIGN_DIR or <cache>/campaign-a2k-<crop>)")
    parser.add_argument("--init-weights", default=None,
                        help="release weights to start from when there is no state (default: the shipped weights)")
    parser.add_argument("--pack", default=None, help="data pack folder (default <cache>/pack-<load size>)")
    parser.add_argument("--no-pack", action="store_true", help="decode the image folders on every step")
    add_config_arguments(parser, CAMPAIGN_OPTIONS, defaults=CAMPAIGN_DEFAULTS, helps=CAMPAIGN_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    start_command(__name__)  # before any tensor: the CPU allocator reads the huge-page switch once
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
