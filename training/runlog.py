"""The run log of a training run: ``log.csv`` with one row per iteration, read back and drawn as loss curves.

Written by the trainer (`CsvLog`), read by the reports (`read_log`, `plot_log`), which so need no trainer.
Columns (`CSV_FIELDS`): iteration, lr, the loss terms (total and `training.losses.TERMS`), sec_per_iter and
wall_s (training seconds so far); numbers with 6 significant digits, a term a model does not have left empty.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from training.losses import TERMS
from training.plotting import plot_curves

LOG_NAME = "log.csv"
LOSS_FIELDS = ("total", *TERMS)  # total, global_style, a2k, content: one column per weighted term
CSV_FIELDS = ("iteration", "lr", *LOSS_FIELDS, "sec_per_iter", "wall_s")


class CsvLog:
    """Append-only CSV of per-iteration losses; on resume rows after the resume point are dropped so
    the log stays consistent with the restored state."""

    def __init__(self, path: Path, resume_iteration: int | None) -> None:
        self.path = path
        rows: list[dict[str, str]] = []
        if resume_iteration is not None and path.exists():
            rows = [r for r in read_log(path) if int(r["iteration"]) <= resume_iteration]
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
    """The rows of a run log, as text, in file order."""
    with Path(path).open(newline="") as handle:
        return list(csv.DictReader(handle))


def plot_log(rows: list[dict[str, str]], path: Path, title: str) -> Path | None:
    """Loss curves of the non-empty loss columns of a training log; None with fewer than two rows."""
    if len(rows) < 2:
        return None
    steps = [int(r["iteration"]) for r in rows]
    series = {}
    for key in LOSS_FIELDS:
        values = [float(r[key]) if r.get(key) else math.nan for r in rows]
        if any(math.isfinite(v) and v != 0.0 for v in values):  # e.g. "content" is always 0 for A2K
            series[key] = values
    return plot_curves(steps, series, path, title=title, smooth=max(1, len(rows) // 25))
