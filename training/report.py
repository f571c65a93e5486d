"""Summarise a training run folder for the docs: loss-curve PNG, CSV summary, sample grids.

    python -m training.report --run-dir runs/a2k-cpu-v0 --out docs/training --every 50
"""

from __future__ import annotations

import argparse
import csv
import logging
import shutil
import sys
from pathlib import Path

from PIL import Image

from training.runlog import LOG_NAME, LOSS_FIELDS, plot_log, read_log

logger = logging.getLogger(__name__)
SUMMARY_FIELDS = ("iterations", "lr_end", *LOSS_FIELDS, "sec_per_iter")


def summarise(rows: list[dict[str, str]], every: int) -> list[dict[str, str]]:
    """Mean of each loss and of s/it over consecutive windows of ``every`` iterations."""
    out = []
    for start in range(0, len(rows), every):
        window = rows[start : start + every]

        def mean(key: str, window: list[dict[str, str]] = window) -> str:
            values = [float(r[key]) for r in window if r.get(key)]
            return f"{sum(values) / len(values):.5g}" if values else ""

        out.append({
            "iterations": f"{window[0]['iteration']}-{window[-1]['iteration']}",
            "lr_end": window[-1]["lr"],
            **{k: mean(k) for k in (*LOSS_FIELDS, "sec_per_iter")},
        })
    return out


def write_report(run_dir: Path, out_dir: Path, every: int, name: str) -> list[Path]:
    rows = read_log(run_dir / LOG_NAME)
    if not rows:
        raise ValueError(f"{run_dir / LOG_NAME} has no rows")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    curves = plot_log(rows, out_dir / f"{name}_loss_curves.png", f"{name}: training losses (CPU, batch 8, 128 px)")
    if curves:
        written.append(curves)
    summary = out_dir / f"{name}_loss_summary.csv"
    with summary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_FIELDS)
        writer.writeheader()
        writer.writerows(summarise(rows, every))
    written.append(summary)
    grids = sorted((run_dir / "samples").glob("iter_*.png"))
    readable = []
    for grid in grids:
        try:
            with Image.open(grid) as img:
                img.load()
            readable.append(grid)
        except OSError as exc:
            logger.warning("skipping unreadable sample grid %s: %s", grid, exc)
    for grid in (readable[:1] + readable[-1:]) if readable else []:
        target = out_dir / f"{name}_samples_{grid.stem}.png"
        shutil.copyfile(grid, target)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m training.report", description=__doc__)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--every", type=int, default=50, help="iterations per summary row")
    parser.add_argument("--name", default=None, help="file name prefix (default: run folder name)")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    for path in write_report(run_dir, Path(args.out), args.every, args.name or run_dir.name):
        logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
