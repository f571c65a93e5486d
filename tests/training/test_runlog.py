"""training.runlog: the trainer's log.csv, written, cut back on resume, read and drawn without the trainer."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from training.runlog import CSV_FIELDS, LOG_NAME, CsvLog, plot_log, read_log


def _row(i: int) -> dict[str, float]:
    return {"iteration": i, "lr": 2e-4, "total": 10.0 - i, "global_style": 1.0 / (i + 1), "a2k": 3.123456789,
            "sec_per_iter": 0.5, "wall_s": 0.5 * (i + 1)}


def test_rows_round_trip_in_the_file_format(tmp_path: Path) -> None:
    path = tmp_path / LOG_NAME
    log = CsvLog(path, resume_iteration=None)
    for i in range(3):
        log.append(_row(i))
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(CSV_FIELDS)
    assert lines[1] == "0,0.0002,10,1,3.12346,,0.5,0.5"  # 6 significant digits; a missing term stays empty
    assert read_log(path) == log.rows and [r["iteration"] for r in log.rows] == ["0", "1", "2"]


def test_resume_drops_the_rows_after_the_restored_iteration(tmp_path: Path) -> None:
    path = tmp_path / LOG_NAME
    first = CsvLog(path, resume_iteration=None)
    for i in range(5):
        first.append(_row(i))
    resumed = CsvLog(path, resume_iteration=2)
    resumed.append(_row(3))
    assert [r["iteration"] for r in read_log(path)] == ["0", "1", "2", "3"]
    assert CsvLog(path, resume_iteration=None).rows == [] and read_log(path) == []  # a fresh run starts over


def test_plot_draws_the_terms_that_are_there(tmp_path: Path) -> None:
    path = tmp_path / LOG_NAME
    log = CsvLog(path, resume_iteration=None)
    assert plot_log(log.rows, tmp_path / "one.png", "t") is None  # fewer than two rows: nothing to draw
    for i in range(4):
        log.append(_row(i))
    png = plot_log(read_log(path), tmp_path / "curves.png", "losses")
    assert png == tmp_path / "curves.png"
    with Image.open(png) as img:
        assert img.width > 100
