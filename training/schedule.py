"""The learning-rate schedule (paper section 4.1 and the authors' code): constant, then linear to 0.

A run's schedule spans iterations [schedule_start, iters): constant ``lr`` for the first ``constant_frac`` of it,
then linear decay toward 0, evaluated at the run's iteration count, so a resume never restarts or stretches it;
after a fresh optimizer (release weights, no training state) a linear warm-up of ``warmup_iters``.
"""

from __future__ import annotations

from training.config import TrainConfig


def schedule_constant_end(cfg: TrainConfig) -> int:
    """The first iteration of the linear decay: ``constant_frac`` of the way from ``schedule_start`` to ``iters``."""
    return cfg.schedule_start + int((cfg.iters - cfg.schedule_start) * cfg.constant_frac)


def learning_rate(iteration: int, cfg: TrainConfig, fresh_optimizer_at: int | None = None) -> float:
    """Constant ``cfg.lr`` for the first ``constant_frac`` of the schedule (iterations ``schedule_start`` to
    ``iters``), then linear decay toward 0; after a fresh optimizer (at iteration ``fresh_optimizer_at``) the first
    ``warmup_iters`` ramp up linearly, so Adam's first, sign-like updates do not shake weights that are already
    trained."""
    constant_end = schedule_constant_end(cfg)
    if iteration < constant_end:
        lr = cfg.lr
    else:
        decay_iters = max(cfg.iters - constant_end, 1)
        lr = cfg.lr * max(0.0, 1.0 - (iteration - constant_end) / decay_iters)
    if fresh_optimizer_at is not None and cfg.warmup_iters > 0:
        lr *= min(1.0, (iteration - fresh_optimizer_at + 1) / cfg.warmup_iters)
    return lr
