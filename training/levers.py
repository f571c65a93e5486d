"""The training step's speed levers, chosen for the machine at start: bf16 autocast (by capability),
channels_last (by measuring the whole step both ways), fused encoding, and the torch thread count (measured
again and again while training, `ThreadTuner`). The loss the step computes is the same either way.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

import torch

from model.hardware import has_native_bf16
from training.config import TrainConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepLevers:
    """How the training step runs on this machine; the loss it computes is the same either way."""

    channels_last: bool = False
    bf16: bool = False  # autocast for the frozen encoder and loss network (CPU) / the whole step (CUDA)
    bf16_trained: bool = False  # CPU: the A2K modules and decoder under autocast too (fp32 master weights)
    fused_encode: bool = False  # content and style through the encoder as one batch
    reasons: tuple[str, ...] = ()

    def describe(self) -> str:
        flags = (f"channels_last={self.channels_last} bf16={self.bf16} bf16_trained={self.bf16_trained} "
                 f"fused_encode={self.fused_encode}")
        return flags + (f" ({'; '.join(self.reasons)})" if self.reasons else "")


LayoutTimer = Callable[[StepLevers], float]


def choose_levers(cfg: TrainConfig, device: torch.device, time_layout: LayoutTimer) -> StepLevers:
    """Resolve "auto" per machine: capability for bf16, a measurement for channels_last (CPU).

    ``time_layout(levers)`` returns the seconds of a step under ``levers`` (`Trainer.time_dry_step`)."""
    reasons: list[str] = []
    if cfg.bf16 == "auto":
        bf16 = device.type == "cuda" or has_native_bf16()
        reasons.append("bf16: CUDA" if device.type == "cuda" else
                       f"bf16: CPU {'has' if bf16 else 'lacks'} native bf16 (avx512_bf16/amx)")
    else:
        bf16 = cfg.bf16 == "on"
    bf16_trained = _choose_bf16_trained(cfg, device, bf16, reasons)
    levers = StepLevers(channels_last=cfg.channels_last == "on", bf16=bf16, bf16_trained=bf16_trained,
                        fused_encode=cfg.fused_encode)
    if cfg.channels_last == "auto":
        if device.type == "cuda":
            levers = replace(levers, channels_last=True)
            reasons.append("channels_last: CUDA")
        else:
            plain, fast = measure_layouts(time_layout, levers)
            levers = replace(levers, channels_last=fast < 0.95 * plain)
            reasons.append(f"channels_last: step fwd+bwd {plain:.2f} s -> {fast:.2f} s measured"
                           + (" under bf16" if bf16 else ""))
    return replace(levers, reasons=tuple(reasons))


def measure_layouts(time_layout: LayoutTimer, levers: StepLevers, rounds: int = 3) -> tuple[float, float]:
    """Median seconds of the step contiguous and channels_last, the two taking turns after a warm-up each.

    The whole step, not the frozen encoder alone: on a Zen CPU with avx512_bf16 the encoder came out even (0.79
    vs 0.82 s) while the whole bf16 step ran 1.3x faster channels_last (2.1-2.4 vs 1.6-1.7 s, paired); one
    sample per layout once turned the layout off on a noisy start where it made the step 1.38x slower."""
    contiguous, channels_last = replace(levers, channels_last=False), replace(levers, channels_last=True)
    time_layout(contiguous), time_layout(channels_last)  # oneDNN's primitive cache, the heap
    plain, fast = [], []
    for _ in range(rounds):
        plain.append(time_layout(contiguous))
        fast.append(time_layout(channels_last))
    return statistics.median(plain), statistics.median(fast)


def _choose_bf16_trained(cfg: TrainConfig, device: torch.device, bf16: bool, reasons: list[str]) -> bool:
    """The trained parts under bf16 too: on CUDA the bf16 autocast covers the whole step already; on a CPU, auto
    follows native bf16 (there the decoder's forward + backward ran ~2.5x faster at 128 px; without it oneDNN
    emulates bf16, 6-20x slower), and only when the frozen networks run bf16 as well."""
    if device.type == "cuda":
        reasons.append("bf16_trained: CUDA, part of the whole step's autocast (follows bf16)")
        return bf16
    if cfg.bf16_trained != "auto":
        return cfg.bf16_trained == "on"
    chosen = bf16 and has_native_bf16()
    reasons.append(f"bf16_trained: {'on' if chosen else 'off'}, "
                   + ("the CPU has native bf16" if chosen else "needs bf16 on a CPU with native bf16"))
    return chosen


def autocast_for(device: torch.device, enabled: bool = True) -> AbstractContextManager[Any]:
    """bf16 autocast where the levers ask for it; full fp32 otherwise."""
    if not enabled:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


class ThreadTuner:
    """Pick the torch thread count by measurement, again and again: on a shared 2-core machine one thread
    beat two by 1.6x while other jobs ran (two threads wait on each other when a core is taken), and two win
    on a quiet one. Probes each candidate for ``probe`` steps, then keeps the faster for ``period`` steps."""

    def __init__(self, candidates: tuple[int, ...], probe: int = 3, period: int = 50) -> None:
        self.candidates = candidates
        self.probe, self.period = probe, period
        self.samples: dict[int, list[float]] = {c: [] for c in candidates}
        self.best = candidates[-1]
        self.phase_step = 0
        self.current = candidates[0]
        torch.set_num_threads(self.current)

    def observe(self, seconds: float) -> None:
        self.phase_step += 1
        probing = self.phase_step <= self.probe * len(self.candidates)
        if probing:
            self.samples[self.current].append(seconds)
            if self.phase_step % self.probe == 0:
                index = self.phase_step // self.probe
                if index < len(self.candidates):
                    self._use(self.candidates[index])
                else:
                    medians = {c: sorted(v)[len(v) // 2] for c, v in self.samples.items() if v}
                    self.best = min(medians, key=medians.__getitem__)
                    logger.info("threads: %s s/step median -> using %d",
                                {c: round(m, 2) for c, m in medians.items()}, self.best)
                    self._use(self.best)
        elif self.phase_step >= self.probe * len(self.candidates) + self.period:
            self.phase_step = 0
            self.samples = {c: [] for c in self.candidates}
            self._use(self.candidates[0])

    def _use(self, threads: int) -> None:
        self.current = threads
        torch.set_num_threads(threads)
