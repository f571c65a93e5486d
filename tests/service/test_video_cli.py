"""``stya2k video``: local (the model in this process, service.video's pipeline) and --url (a video job), its
usage errors (exit 2) and failures (exit 1), the progress bar over frames and the STYA2K_VIDEO_* limits."""

from __future__ import annotations

from pathlib import Path

import pytest
from service_helpers import RunningServer, image_bytes
from video_clips import describe, make_clip

from service import cli

LOCAL = ["--checkpoint", "random", "--threads", "1"]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    made = {
        "clip": ("clip.mp4", make_clip(frames=6)),  # 64x48 at 12 fps, AAC tone
        "gif": ("clip.gif", make_clip(container="gif", codec="gif", audio=None, frames=4)),
        "style": ("style.png", image_bytes((64, 64), color=(250, 120, 10))),
        "style2": ("style2.jpg", image_bytes((70, 50), "JPEG", color=(10, 60, 240))),
        "broken": ("broken.mp4", b"hello world" * 50),  # named like a video, and not one
    }
    paths = {}
    for key, (name, data) in made.items():
        paths[key] = tmp_path / name
        paths[key].write_bytes(data)
    return paths


def run(argv: list[str | Path]) -> int:
    return cli.main([str(a) for a in argv])


def test_local_video_writes_an_mp4_with_a_progress_bar_over_the_frames(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out" / "styled.mp4"
    assert run(["video", files["clip"], files["style"], "-o", out, "--alpha", "0.8", *LOCAL]) == 0
    made = describe(out.read_bytes())
    assert (made["codec"], made["frames"], made["size"], made["audio_codec"]) == ("h264", 6, (64, 48), "aac")
    err = capsys.readouterr().err
    assert "6/6" in err and "frames" in err
    assert f"wrote {out} (6 frames at 12 fps, 64x48, audio copied aac;" in err


def test_local_video_blends_two_styles_over_a_gif(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "blend.mp4"
    styles = [files["style"], files["style2"]]
    assert run(["video", files["gif"], *styles, "--weights", "0.3,0.7", "--max-side", "64", "--preserve-color",
                "--style-fit", "whole", "-o", out, "-q", *LOCAL]) == 0  # fmt: skip
    made = describe(out.read_bytes())
    assert (made["frames"], made["size"], made["audio_codec"]) == (4, (64, 48), None)
    assert capsys.readouterr().err.count("\n") <= 1  # -q: no bar, no summary (at most the random-weights warning)


def test_local_video_smoothing(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    temporal = pytest.importorskip("model.temporal", reason="temporal smoothing needs OpenCV")
    if not hasattr(temporal, "TemporalSmoother"):
        pytest.skip("model.temporal has no TemporalSmoother yet")
    out = tmp_path / "smooth.mp4"
    assert run(["video", files["clip"], files["style"], "--smoothing", "0.5", "-o", out, *LOCAL]) == 0
    assert describe(out.read_bytes())["frames"] == 6
    assert "smoothing 0.5" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["video", "{clip}", "{style}"], "-o"),
        (["video", "missing.mp4", "{style}", "-o", "x.mp4"], "video missing.mp4 does not exist"),
        (["video", "{clip}", "missing.png", "-o", "x.mp4"], "style missing.png does not exist"),
        (["video", "{clip}", "{style}", "-o", "x.webm"], "name it .mp4"),
        (["video", "{clip}", "{style}", "--weights", "1", "-o", "x.mp4"], "give several styles"),
        (["video", "{clip}", "{style}", "{style2}", "--weights", "1", "-o", "x.mp4"], "one per style"),
        (["video", "{clip}", "{style}", "--smoothing", "0.99", "-o", "x.mp4"], "allowed 0..0.95"),
        (["video", "{clip}", "{style}", "--max-side", "2048", "-o", "x.mp4"], "STYA2K_VIDEO_MAX_SIDE"),
        (["video", "{clip}", "{style}", "--format", "png", "-o", "x.mp4"], "unrecognized arguments: --format"),
        (["video", "{clip}", "{style}", "--tile-px", "64", "-o", "x.mp4"], "unrecognized arguments: --tile-px"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str],
    message: str,
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        cli.main([a.format(**{k: str(v) for k, v in files.items()}) for a in [*argv, *LOCAL]])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x.mp4").exists()


def test_a_bad_video_setting_in_the_environment_is_a_usage_error(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STYA2K_VIDEO_MAX_FRAMES", "many")
    with pytest.raises(SystemExit) as exited:
        run(["video", files["clip"], files["style"], "-o", tmp_path / "x.mp4", *LOCAL])
    assert exited.value.code == 2 and "STYA2K_VIDEO_MAX_FRAMES='many' is not an integer" in capsys.readouterr().err


def test_local_failures_exit_1_with_the_services_message(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "x.mp4"
    assert run(["video", files["broken"], files["style"], "-o", out, *LOCAL]) == 1
    err = capsys.readouterr().err
    assert "stya2k video: failed: not a readable video" in err and "Traceback" not in err
    monkeypatch.setenv("STYA2K_VIDEO_MAX_FRAMES", "3")  # a server's video limits hold locally too
    assert run(["video", files["clip"], files["style"], "-o", out, *LOCAL]) == 1
    assert "more than 3 frames (STYA2K_VIDEO_MAX_FRAMES)" in capsys.readouterr().err
    assert not out.exists()


def test_url_runs_a_video_job_with_progress_in_frames(
    server: RunningServer, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "remote.mp4"
    before = server.metric("stya2k_http_requests_total", 'endpoint="/v1/jobs",status="202"')
    styles = [files["style"], files["style2"]]
    assert run(["video", files["clip"], *styles, "--weights", "1", "3", "-o", out, "--url", server.url]) == 0
    assert server.metric("stya2k_http_requests_total", 'endpoint="/v1/jobs",status="202"') == before + 1
    made = describe(out.read_bytes())
    assert (made["codec"], made["frames"], made["size"]) == ("h264", 6, (64, 48))
    err = capsys.readouterr().err
    assert "6/6" in err and "frames" in err and "6 frames at 12 fps, 64x48, audio copied aac" in err


def test_url_errors_are_failures(
    server: RunningServer, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.mp4"
    assert run(["video", files["broken"], files["style"], "-o", out, "--url", server.url]) == 1
    assert "HTTP 400 invalid_video" in capsys.readouterr().err
    assert run(["video", files["clip"], files["style"], "--max-side", "2048", "-o", out, "--url", server.url]) == 1
    assert "422 invalid_parameter" in capsys.readouterr().err and not out.exists()


def test_help_names_the_video_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert "video" in cli.build_parser().format_help()
    with pytest.raises(SystemExit) as exited:
        cli.main(["video", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for option in ("--weights", "--alpha", "--preserve-color", "--max-side", "--style-fit", "--smoothing", "--url"):
        assert option in out
    assert "--format" not in out and "--tile-px" not in out
