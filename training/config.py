"""The training run's configuration, from one source: `TrainConfig`'s fields carry their type, default and help
text, and the command-line options of ``python -m training.train`` (and those ``python -m training.campaign``
takes from it) are generated from them, as service/settings.py does for the service's Settings. A checkpoint
stores the whole config (``train_config``, `dataclasses.asdict`).

Field metadata (`option`): ``help`` (a field without it is no option), and where the option differs from the
field's name: ``flag`` (``--content-dir`` for ``content_dirs``, appended once per value), ``metavar``,
``choices``. A bool that defaults to False becomes ``--<name>``; one that defaults to True ``--no-<name>``, and
its help text says what that switch does.
The loss weights are inherited from `training.losses.LossWeights`, so a new weighted loss term brings its
option and its checkpoint entry with it.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from model.config import ARCHS
from training.data import DEFAULT_CONTENT_DIRS, DEFAULT_STYLE_DIRS
from training.losses import LossWeights

LEVER_CHOICES = ("auto", "on", "off")  # a speed lever of the step: chosen for the machine at start, or forced


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A TrainConfig field that is also a command-line option (``flag``, ``metavar``, ``choices`` optional)."""
    return field(default=default, metadata={"help": help, **metadata})


@dataclass(frozen=True, kw_only=True)
class TrainConfig(LossWeights):
    """Everything that defines a training run (stored in its checkpoints)."""

    run_dir: str = field(metadata={"help": "folder for checkpoints, log.csv, plots and samples"})
    arch: str = option("a2k", "model variant", choices=ARCHS)
    content_dirs: tuple[str, ...] = option(DEFAULT_CONTENT_DIRS, "content folder (repeatable; default "
                                           "../shared/data/train/content)", flag="--content-dir", metavar="DIR")
    style_dirs: tuple[str, ...] = option(DEFAULT_STYLE_DIRS, "style folder (repeatable; default "
                                         "../shared/data/train/style{,_lowres})", flag="--style-dir", metavar="DIR")
    load_size: int = option(512, "short side before crop")
    crop_size: int = option(256, "square random crop size")
    batch_size: int = option(8, "images per step")
    iters: int = option(10_000, "iteration at which the run (and its lr schedule) ends")
    lr: float = option(2e-4, "Adam's learning rate before the linear decay")
    constant_frac: float = option(0.4, "fraction of the schedule at constant lr before the linear decay")
    # The lr schedule spans iterations [schedule_start, iters): a later phase of one campaign (256 px crops after
    # the 128 px run, whose weights are at iteration schedule_start) gets its own constant-then-linear schedule
    # while the iteration count keeps going.
    schedule_start: int = option(0, "the lr schedule runs from ITER to --iters (a later phase started from "
                                 "weights at ITER)", metavar="ITER")
    seed: int = option(0, "seed of the weights, the data order and the sample set")
    workers: int = option(2, "DataLoader worker processes")
    threads: int | None = option(None, "torch CPU threads")
    device: str = option("auto", "auto | cpu | cuda | cuda:N")
    ckpt_every: int = option(500, "iterations between checkpoints (0 = at the end only)")
    keep_checkpoints: int = option(3, "numbered checkpoints kept besides last.pt")
    sample_every: int = option(500, "iterations between sample grids (0 = none)")
    log_every: int = option(10, "iterations between progress lines")
    sample_contents: int = 4
    sample_styles: int = 4
    hflip: bool = option(True, "disable random horizontal flips")
    balance_style_dirs: bool = True
    # Pre-decoded data (training.pack) instead of decoding the image folders on every step.
    pack: str | None = option(None, "pre-decoded data (`python -m training.pack`, built at --load-size) instead "
                              "of folders", metavar="DIR")
    # Speed levers of the step, "auto" = chosen for this machine at start (see `training.levers.choose_levers`).
    channels_last: str = option("auto", "channels_last memory format (auto: measured at start on CPU, on for "
                                "CUDA)", choices=LEVER_CHOICES)
    bf16: str = option("auto", "bf16 autocast (auto: CUDA, or a CPU with native bf16; on CPU only the frozen "
                       "VGG)", choices=LEVER_CHOICES)
    # bf16 autocast for the trained A2K modules and decoder too (their weights, gradients and Adam stay fp32).
    bf16_trained: str = option("auto", "CPU: bf16 autocast for the trained A2K modules and decoder too, fp32 "
                               "weights and Adam (auto: with --bf16 on a CPU with native bf16)", choices=LEVER_CHOICES)
    # content and style through the encoder as one batch
    fused_encode: bool = option(True, "encode content and style in two encoder calls instead of one batch")
    # Linear lr warm-up over this many iterations after a fresh optimizer (--init-weights); 0 = none.
    warmup_iters: int = option(0, "linear lr warm-up over this many iterations after --init-weights' fresh "
                               "optimizer")
    # CPU: "auto" retries 1 thread vs all cores every so often and keeps the faster (the box is shared).
    thread_tuning: bool = option(False, "CPU: measure 1 thread vs all cores every 50 steps and keep the faster")
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; expected one of {', '.join(ARCHS)}")
        if self.batch_size < 1 or self.iters < 1:
            raise ValueError("batch_size and iters must be >= 1")
        if not 0 <= self.schedule_start < self.iters:
            raise ValueError(f"schedule_start must be in [0, iters={self.iters}), got {self.schedule_start}")
        if not 0.0 <= self.constant_frac <= 1.0:
            raise ValueError("constant_frac must be in [0, 1]")
        for name in ("channels_last", "bf16", "bf16_trained"):
            if getattr(self, name) not in LEVER_CHOICES:
                raise ValueError(f"{name} must be one of {', '.join(LEVER_CHOICES)}, got {getattr(self, name)!r}")

    def loss_weights(self) -> dict[str, float]:
        """The weight fields by name, as `training.losses.LossConfig` takes them."""
        return {f.name: getattr(self, f.name) for f in fields(LossWeights)}


def option_fields() -> list[Field[Any]]:
    """TrainConfig's options in help order: its own fields, then the loss weights it inherits."""
    inherited = {f.name for f in fields(LossWeights)}
    with_help = [f for f in fields(TrainConfig) if "help" in f.metadata]
    return [f for f in with_help if f.name not in inherited] + [f for f in with_help if f.name in inherited]


def _flag(f: Field[Any]) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def _value_type(f: Field[Any]) -> Any:
    """The type argparse converts a value with: int / float / str, also for ``X | None`` and ``tuple[X, ...]``."""
    hint = typing.get_type_hints(TrainConfig)[f.name]
    if isinstance(hint, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is tuple:
        hint = typing.get_args(hint)[0]
    return hint


def _repeatable(f: Field[Any]) -> bool:
    return typing.get_origin(typing.get_type_hints(TrainConfig)[f.name]) is tuple


def add_config_arguments(parser: argparse.ArgumentParser, names: Iterable[str] | None = None,
                         defaults: Mapping[str, Any] | None = None, helps: Mapping[str, str] | None = None) -> None:
    """Add TrainConfig's options (all, or those ``names``) to ``parser``; ``defaults`` and ``helps`` override the
    field's own for a command with other ones (the campaign). The options' dests are the field names."""
    chosen = None if names is None else set(names)
    defaults, helps = defaults or {}, helps or {}
    for f in option_fields():
        if chosen is not None and f.name not in chosen:
            continue
        help_text = helps.get(f.name, f.metadata["help"])
        default = defaults.get(f.name, f.default)
        if f.default is MISSING and f.name not in defaults:
            parser.add_argument(_flag(f), dest=f.name, required=True, help=help_text)
        elif _value_type(f) is bool:
            if default:  # on unless switched off
                parser.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false",
                                    help=help_text)
            else:
                parser.add_argument(_flag(f), dest=f.name, action="store_true", help=help_text)
        elif _repeatable(f):
            # appended once per value; None = the field's default (argparse would append to a given default)
            parser.add_argument(_flag(f), dest=f.name, action="append", default=None,
                                metavar=f.metadata.get("metavar"), help=help_text)
        else:
            parser.add_argument(_flag(f), dest=f.name, type=_value_type(f), default=default,
                                choices=f.metadata.get("choices"), metavar=f.metadata.get("metavar"),
                                help=help_text)


def config_values(args: argparse.Namespace, names: Iterable[str] | None = None) -> dict[str, Any]:
    """TrainConfig's fields from parsed options (all, or those ``names``): repeated options as tuples, and a
    repeatable option that was never given as the field's default."""
    chosen = None if names is None else set(names)
    values: dict[str, Any] = {}
    for f in option_fields():
        if chosen is not None and f.name not in chosen:
            continue
        value = getattr(args, f.name)
        if _repeatable(f):
            value = tuple(value) if value else f.default
        values[f.name] = value
    return values
