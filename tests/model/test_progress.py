"""model.progress: one progress bar for the CLI's batches and the trainer's iterations."""

from __future__ import annotations

import io
import logging

import pytest

from model.progress import Progress, clock


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_one_line_per_item_off_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(3, stream)
    for name in ("a", "b", "c"):
        progress.step(name)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("[" + "#" * 9 + "-" * 19 + "] 1/3 ") and lines[0].endswith(" a")
    assert lines[-1].startswith("[" + "#" * 28 + "] 3/3 ") and " eta " in lines[-1] and lines[-1].endswith(" c")


def test_terminal_redraws_in_place_and_ends_the_line() -> None:
    stream = Terminal()
    progress = Progress(2, stream, width=4)
    progress.step("x")
    progress.step("y")
    text = stream.getvalue()
    assert text.count("\r\x1b[2K") == 2 and text.endswith(" y\n") and text.count("\n") == 1
    assert "[##--] 1/2" in text and "[####] 2/2" in text


def test_a_single_item_or_disabled_shows_nothing() -> None:
    for progress in (Progress(1, io.StringIO()), Progress(5, io.StringIO(), enabled=False),
                     Progress(10, io.StringIO(), start=9)):
        progress.step("only")
        assert progress.stream.getvalue() == ""


def test_training_use_resumes_at_start_logs_every_n_and_the_last(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.progress")
    stream = io.StringIO()
    progress = Progress(10, stream, start=4, every=3, logger=log)
    with caplog.at_level(logging.INFO, logger="test.progress"):
        for _ in range(6):
            progress.step("loss 0.5000")
    assert stream.getvalue() == ""  # off a terminal the lines go to the log, timestamped like the rest
    counts = [r.getMessage().split("] ")[1].split()[0] for r in caplog.records]
    assert counts == ["6/10", "9/10", "10/10"]
    assert all(r.getMessage().endswith("loss 0.5000") for r in caplog.records)


def test_clock_reads_at_every_scale() -> None:
    assert clock(6.24) == "  6.2s"
    assert clock(245) == "4m05s"
    assert clock(2 * 3600 + 7 * 60 + 30) == "2h07m"
