"""A progress bar without dependencies, for the CLI's batches and the trainer's iterations.

On a terminal one line is redrawn in place; anywhere else (a log file, a pipe, CI) each item writes a line of its
own, or every ``every`` items and the last, so logs stay readable. A line::

    [##############--------------] 14/28   6.2s eta   6.2s img_14__wave.png
"""

from __future__ import annotations

import logging
import time
from typing import IO


def clock(seconds: float) -> str:
    """A duration for a progress line: '  6.2s' under a minute, then '4m05s', then '2h07m'."""
    if seconds < 60:
        return f"{seconds:5.1f}s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m{int(seconds % 60):02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


class Progress:
    """Counts ``step`` calls from ``start`` to ``total`` and reports each: bar, count, elapsed, eta, label.

    The label carries whatever a caller wants beside the count (a file name; a loss and a speed). Off a terminal,
    lines go to ``logger`` when one is given (timestamped like the caller's other log lines), else to ``stream``.
    A single item needs no bar: with at most one to go, nothing is shown.
    """

    def __init__(self, total: int, stream: IO[str], enabled: bool = True, width: int = 28, *, start: int = 0,
                 every: int = 1, logger: logging.Logger | None = None) -> None:
        self.total, self.start, self.done = total, start, start
        self.stream, self.logger = stream, logger
        self.enabled = enabled and total - start > 1
        self.width, self.every = width, max(1, every)
        self.started = time.monotonic()
        self.tty = bool(getattr(stream, "isatty", lambda: False)())

    def line(self, label: str = "") -> str:
        """The current line: eta from the mean time per item since this bar started."""
        filled = round(self.width * self.done / self.total) if self.total else self.width
        elapsed = time.monotonic() - self.started
        steps = self.done - self.start
        eta = elapsed / steps * (self.total - self.done) if steps else 0.0
        bar = "#" * filled + "-" * (self.width - filled)
        text = f"[{bar}] {self.done}/{self.total} {clock(elapsed)} eta {clock(eta)}"
        return f"{text} {label}" if label else text

    def step(self, label: str = "") -> None:
        """One more item done; ``label`` says which (or how it went)."""
        self.done += 1
        if not self.enabled:
            return
        last = self.done >= self.total
        if self.tty:
            self.stream.write("\r\x1b[2K" + self.line(label) + ("\n" if last else ""))
            self.stream.flush()
        elif self.done % self.every == 0 or last:
            self._write_line(self.line(label))

    def _write_line(self, text: str) -> None:
        if self.logger is not None:
            self.logger.info("%s", text)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()
