"""Run-folder report: summary CSV, loss-curve PNG, first/last readable sample grids."""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image

from training.report import summarise, write_report
from training.runlog import CSV_FIELDS


def _fake_run(run_dir: Path, iterations: int) -> None:
    (run_dir / "samples").mkdir(parents=True)
    with (run_dir / "log.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for i in range(iterations):
            writer.writerow({"iteration": i, "lr": 2e-4, "total": 100 - i, "global_style": 5 - i / 100,
                             "a2k": 40 - i / 10, "content": "", "sec_per_iter": 5.0, "wall_s": 5.0 * (i + 1)})
    for i in (0, 10, 20):
        Image.new("RGB", (40, 30), (i, 0, 0)).save(run_dir / "samples" / f"iter_{i:07d}.png")
    (run_dir / "samples" / "iter_0000030.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")


def test_summary_windows_average_losses() -> None:
    rows = [{"iteration": str(i), "lr": "1", "total": str(i), "sec_per_iter": "2"} for i in range(4)]
    summary = summarise(rows, 2)
    assert [r["iterations"] for r in summary] == ["0-1", "2-3"]
    assert [r["total"] for r in summary] == ["0.5", "2.5"]


def test_write_report_skips_broken_grids(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _fake_run(run_dir, 30)
    written = write_report(run_dir, tmp_path / "docs", every=10, name="demo")
    names = sorted(p.name for p in written)
    assert names == ["demo_loss_curves.png", "demo_loss_summary.csv",
                     "demo_samples_iter_0000000.png", "demo_samples_iter_0000020.png"]
    with Image.open(tmp_path / "docs" / "demo_loss_curves.png") as img:
        img.load()
        assert img.width > 100
