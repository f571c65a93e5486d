"""A wall-clock budget for a training session (``--time-budget``): stop while the final checkpoint still fits."""

from __future__ import annotations

import math
import time


class Deadline:
    """Stop before a wall-clock budget: one more step (the slowest recent one, the machine's speed drifts)
    plus the final checkpoint and samples must still fit."""

    def __init__(self, budget_s: float | None, window: int = 20) -> None:
        self.end = None if budget_s is None else time.monotonic() + budget_s
        self.recent: list[float] = []
        self.window = window
        self.checkpoint_s = 5.0

    def observe_step(self, seconds: float) -> None:
        self.recent = [*self.recent, seconds][-self.window:]

    def observe_checkpoint(self, seconds: float) -> None:
        self.checkpoint_s = max(self.checkpoint_s, seconds)

    def remaining(self) -> float:
        return math.inf if self.end is None else self.end - time.monotonic()

    def must_stop(self) -> bool:
        if self.end is None:
            return False
        next_step = max(self.recent) if self.recent else 0.0
        # The final save writes a checkpoint and a sample grid (about one step's worth of forward passes).
        return self.remaining() < next_step * 2 + self.checkpoint_s
