"""The ``stya2k`` command line: parsing, exit codes, local (in-process) and --url (server) transfers, serve."""

from __future__ import annotations

import dataclasses
import os
import platform
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from service_helpers import RunningServer, free_port, image_bytes

from model import hardware
from service import cli
from service.client import Client
from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
LOCAL = ["--checkpoint", "random", "--max-side", "64", "--threads", "1"]


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    files = {
        "content": ("content.png", image_bytes((80, 60), color=(30, 120, 200))),
        "style": ("style.png", image_bytes((64, 64), color=(250, 200, 10))),
        "style2": ("style2.jpg", image_bytes((70, 50), "JPEG", color=(20, 200, 60))),
        "broken": ("broken.png", b"this is not an image"),
    }
    paths = {}
    for key, (name, data) in files.items():
        paths[key] = tmp_path / "in" / name
        paths[key].parent.mkdir(exist_ok=True)
        paths[key].write_bytes(data)
    mask = Image.new("L", (80, 60), 0)
    mask.paste(255, (0, 0, 40, 60))
    paths["mask1"], paths["mask2"] = tmp_path / "m1.png", tmp_path / "m2.png"
    mask.save(paths["mask1"])
    Image.eval(mask, lambda v: 255 - v).save(paths["mask2"])
    return paths


def run(argv: list[str | Path]) -> int:
    return cli.main([str(a) for a in argv])


# ---------------------------------------------------------------------------------------------- parsing
def test_help_lists_every_command_and_needs_no_torch() -> None:
    code = (
        "import sys; from service import cli; cli.build_parser().format_help(); "
        "print('torch' in sys.modules, 'model' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["False", "False"]  # --help works however broken the model package is
    help_text = cli.build_parser().format_help()
    for command in ("serve", "stylize", "interpolate", "multistyle", "video", "train", "eval"):
        assert command in help_text


def test_python_m_service_is_the_same_cli() -> None:
    """`python -m service --help` prints the CLI's help (it used to start a server), without warnings."""
    for argv in (["--help"], ["serve", "--help"], ["stylize", "--help"]):
        done = subprocess.run([sys.executable, "-m", "service", *argv], cwd=REPO, capture_output=True, text=True,
                              timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("usage: python -m service"), done.stdout[:200]
        assert "Warning" not in done.stderr, done.stderr  # e.g. torch's "Failed to initialize NumPy"
    top = subprocess.run([sys.executable, "-m", "service", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=60).stdout  # fmt: skip
    assert top == cli.build_parser("python -m service").format_help()
    bad = subprocess.run([sys.executable, "-m", "service", "serve", "--port", "x"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "--port" in bad.stderr


def test_required_output_shows_no_default(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("stylize", "interpolate", "multistyle"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        out = capsys.readouterr().out
        output_help = out[out.index("-o OUT, --output OUT") :].split("\n  -", 1)[0]
        assert "required" in output_help and "default" not in output_help, output_help


def test_console_script_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["stylize", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for option in ("--alpha", "--preserve-color", "--max-side", "--format", "--url", "--checkpoint", "folder"):
        assert option in out


def test_every_setting_is_a_documented_serve_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    out = capsys.readouterr().out
    for field in dataclasses.fields(Settings):
        assert "--" + field.name.replace("_", "-") in out
        assert f"STYA2K_{field.name.upper()}" in out
        assert Settings.help(field.name).split()[0] in out  # the help text comes from the Settings field


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["stylize", "{content}", "{style}", "-o", "x.png", "--alpha", "1.5"], "allowed 0..1"),
        (["stylize", "{content}", "{style}"], "-o"),
        (["stylize", "{content}", "{style}", "-o", "x.png", "--max-side", "10"], "at least 64"),
        (["stylize", "missing.png", "{style}", "-o", "x.png"], "does not exist"),
        (["stylize", "{content}", "{style}", "-o", "x.tga"], "unknown suffix"),
        (["stylize", "{content}", "{style}", "-o", "x.png", "--format", "jpeg"], "contradicts"),
        (["interpolate", "{content}", "{style}", "-o", "x.png"], "at least 2 styles"),
        (["interpolate", "{content}", "{style}", "{style2}", "--weights", "1", "-o", "x.png"], "one per style"),
        (["interpolate", "{content}", "{style}", "{style2}", "--weights", "a,b", "-o", "x.png"], "numbers"),
        (["interpolate", "{content}", "{style}", "{style2}", "--weights", "0", "0", "-o", "x.png"], "not all zero"),
        (["multistyle", "{content}", "{style}", "{style2}", "-o", "x.png"], "--masks"),
        (["multistyle", "{content}", "{style}", "{style2}", "--masks", "{mask1}", "-o", "x.png"], "one per style"),
        (
            [
                "multistyle",
                "{content}",
                "{style}",
                "{style2}",
                "--masks",
                "{mask1}",
                "{mask2}",
                "--labels",
                "{mask1}",
                "-o",
                "x.png",
            ],
            "not allowed with",
        ),
        (
            ["multistyle", "{content}", "{style}", "{style2}", "--labels", "{mask1}", "--feather", "99", "-o", "x.png"],
            "0..64",
        ),
        (["serve", "--port", "99999"], "out of range"),
        (["serve", "--dtype", "float8"], "not allowed"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str],
    message: str,
    images: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    filled = [a.format(**images) for a in argv]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        cli.main(filled)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_serve_bad_env_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STYA2K_MAX_STYLES", "99")
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", "--port", "1"])
    assert exited.value.code == 2
    assert "STYA2K_MAX_STYLES" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- local mode
def test_local_stylize_folders_with_progress(
    images: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    styles = tmp_path / "styles"
    styles.mkdir()
    for key in ("style", "style2"):
        (styles / images[key].name).write_bytes(images[key].read_bytes())
    (styles / "notes.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "out"
    assert run(["stylize", images["content"], styles, "-o", out, "--format", "webp", *LOCAL]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["content__style.webp", "content__style2.webp"]
    assert all(_size(out / name) == (64, 48) for name in written)
    err = capsys.readouterr().err
    assert "2/2" in err and "wrote 2 of 2 images" in err


def test_local_folder_keeps_going_past_a_bad_image(
    images: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    # every image of the "in" folder (content, style, style2, broken) x one style: 4 pairs, 1 broken
    assert run(["stylize", images["content"].parent, images["style"], "-o", out, *LOCAL, "--alpha", "0.5"]) == 1
    assert len(list(out.iterdir())) == 3
    err = capsys.readouterr().err
    assert "wrote 3 of 4 images" in err
    assert "broken.png x style.png: content: not an image format" in err
    assert "Traceback" not in err


def test_local_interpolate_and_multistyle(images: dict[str, Path], tmp_path: Path) -> None:
    blended, masked = tmp_path / "blend.jpg", tmp_path / "masked.png"
    styles = [images["style"], images["style2"]]
    assert run(["interpolate", images["content"], *styles, "--weights", "0.7,0.3", "-o", blended, *LOCAL]) == 0
    assert run(["multistyle", images["content"], *styles, "--masks", images["mask1"], images["mask2"],
                "-o", masked, "--preserve-color", *LOCAL]) == 0  # fmt: skip
    assert _size(blended) == _size(masked) == (64, 48)
    assert blended.read_bytes()[:2] == b"\xff\xd8"


def test_local_large_output_runs_tile_steps_with_a_progress_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    content, style, out = tmp_path / "wide.png", tmp_path / "s.png", tmp_path / "o.png"
    content.write_bytes(image_bytes((128, 64), color=(30, 120, 200)))
    style.write_bytes(image_bytes((64, 64), color=(250, 200, 10)))
    tiles = ["--checkpoint", "random", "--threads", "1", "--tile-px", "64", "--tile-margin-px", "64"]
    assert run(["stylize", content, style, "-o", out, "--max-side", "128", *tiles]) == 0
    assert _size(out) == (128, 64)
    err = capsys.readouterr().err
    assert "4/4" in err and "statistics pass, tile 1/2" in err and "transfer pass, tile 2/2" in err  # 2 x 1 tiles
    with pytest.raises(SystemExit) as exited:
        run(["stylize", content, style, "-o", out, "--max-side", "128", *tiles[:4], "--tile-px", "100"])
    assert exited.value.code == 2 and "--tile-px=100 must be a multiple of 64" in capsys.readouterr().err


def test_local_missing_weights_is_a_failure(
    images: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.pt"
    code = run(["stylize", images["content"], images["style"], "-o", tmp_path / "o.png", "--checkpoint", missing])
    assert code == 1
    err = capsys.readouterr().err
    assert "cannot load the model" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------- --url mode
def test_remote_transfers(
    server: RunningServer, images: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ["--url", server.url]
    styles = [images["style"], images["style2"]]
    labels = tmp_path / "labels.png"
    label_map = Image.new("L", (80, 60), 0)
    label_map.paste(1, (0, 30, 80, 60))
    label_map.save(labels)
    assert run(["stylize", images["content"], images["style"], "-o", tmp_path / "a.png", *url]) == 0
    assert run(["interpolate", images["content"], *styles, "--weights", "1", "2", "-o", tmp_path / "b.png", *url]) == 0
    assert run(["multistyle", images["content"], *styles, "--labels", labels, "-o", tmp_path / "c.webp", *url]) == 0
    for name in ("a.png", "b.png", "c.webp"):
        assert _size(tmp_path / name) == (64, 48)
    assert "wrote" in capsys.readouterr().err


def test_remote_errors_are_failures(
    server: RunningServer, images: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o.png"
    assert run(["stylize", images["broken"], images["style"], "-o", out, "--url", server.url]) == 1
    err = capsys.readouterr().err
    assert "415 unsupported_media_type" in err and "content" in err
    assert (
        run(["stylize", images["content"], images["style"], "-o", out, "--url", server.url, "--max-side", "9999"]) == 1
    )  # beyond the sync max_side the CLI submits a job: this is beyond the jobs' STYA2K_JOBS_MAX_SIDE too
    assert "max_side" in capsys.readouterr().err
    assert (
        run(["stylize", images["content"], images["style"], "-o", out, "--url", f"http://127.0.0.1:{free_port()}"]) == 1
    )
    assert "cannot talk to" in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- train / eval
def test_delegated_commands(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["train", "--help"])
    assert exited.value.code == 0
    assert "--run-dir" in capsys.readouterr().out  # training.train's own options
    with pytest.raises(SystemExit) as exited:
        cli.main(["train", "--bogus"])
    assert exited.value.code == 2
    monkeypatch.setitem(cli.DELEGATED, "eval", "model.no_such_module")
    assert cli.main(["eval"]) == 1
    err = capsys.readouterr().err
    assert "stya2k eval: unavailable" in err and "model.no_such_module" in err


# ---------------------------------------------------------------------------------------------- serve
@pytest.mark.parametrize("module", ["service.cli", "service"])  # `python -m service serve` = `stya2k serve`
def test_serve_subprocess_flags_override_env_and_drain_on_sigterm(
    module: str, images: dict[str, Path], tmp_path: Path
) -> None:
    port = free_port()
    env = {**os.environ, "STYA2K_MAX_BATCH_SIZE": "3", "STYA2K_WEIGHTS": "random", "STYA2K_WARMUP": "false"}
    argv = [sys.executable, "-m", module, "serve", "--port", str(port), "--max-batch-size", "5",
            "--max-side", "64", "--default-side", "64", "--style-size", "64", "--threads", "1",
            "--drain-grace-s", "0", "--log-level", "warning"]  # fmt: skip
    process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with Client(f"http://127.0.0.1:{port}", timeout_s=30) as client:
            client.wait_until_ready(timeout_s=90)
            info = client.info()
            result = client.stylize(images["content"], images["style"])
        assert info["batching"]["max_batch_size"] == 5  # the flag beat STYA2K_MAX_BATCH_SIZE=3
        assert info["model"]["weights"] == "random"
        assert result.size == (64, 48)
        if info["device"] == "cpu":  # both are CPU matters (null on CUDA)
            # A real server process takes its big tensors from huge pages wherever the kernel offers them, and
            # keeps freed memory for the next request.
            runtime = info["runtime"]
            thp_env = os.environ.get("THP_MEM_ALLOC_ENABLE", "1")
            offered = hardware.thp_mode() in ("always", "madvise") and thp_env == "1"
            assert runtime["huge_pages"].startswith("on:" if offered else "off:"), runtime["huge_pages"]
            if platform.libc_ver()[0] == "glibc" and not set(hardware._MALLOC_ENV) & set(os.environ):
                assert runtime["heap"].startswith("glibc keeps freed memory"), runtime["heap"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.stderr is not None
    assert b"Traceback" not in process.stderr.read()


def test_export_graph_writes_three_checked_graphs_with_the_weights_digest(
    graph_cache: Path, seeded_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The session's graphs were written by `stya2k export-graph` (tests/conftest.py); asked again, it finds
    them complete and reports each file with its metadata."""
    import json

    from model.checkpoint import sha256_file
    from service.backends.onnx_runtime import graph_folder

    folder = graph_folder(graph_cache, sha256_file(seeded_weights))
    assert cli.main(["export-graph", "--weights", str(seeded_weights), "--out", str(folder)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(report) == ["decoder", "encoder", "transfer"]
    for graph, entry in report.items():
        assert Path(entry["path"]) == folder / f"{graph}.onnx" and entry["bytes"] > 0
        assert entry["weights_sha256"] == sha256_file(seeded_weights) and json.loads(entry["config"])["arch"] == "a2k"


def test_export_graph_refuses_weights_it_cannot_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnx", reason="the onnx extra is not installed")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    assert cli.main(["export-graph", "--weights", str(broken), "--out", str(tmp_path / "out")]) == 1
    assert "cannot load" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_export_graph_int8_needs_calibration_images(
    graph_cache: Path, seeded_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from model.checkpoint import sha256_file
    from service.backends.graph_backend import graph_folder

    folder = graph_folder(graph_cache, sha256_file(seeded_weights))
    with pytest.raises(SystemExit) as exited:
        cli.main(["export-graph", "--weights", str(seeded_weights), "--out", str(folder), "--int8"])
    assert exited.value.code == 2 and "--int8 needs --calibration DIR" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["export-graph", "--weights", str(seeded_weights), "--out", str(folder), "--int8",
                     "--calibration", str(tmp_path / "empty")]) == 1
    assert "calibration images: no images to calibrate on" in capsys.readouterr().err


def test_export_graph_int8_and_triton_leave_what_they_report(
    graph_cache: Path, int8_graphs: Path, seeded_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--int8` (the session's int8_graphs fixture ran it) left its quality record on held-out pairs; `--triton`
    writes a repository and lists its configs."""
    import json

    from model.checkpoint import sha256_file
    from service.backends.graph_backend import graph_folder

    quality = json.loads((int8_graphs / "quality.json").read_text())
    assert quality["pairs"] == len(quality["per_pair"]) >= 1 and quality["per_pair"][0]["content"].endswith(".png")
    folder = graph_folder(graph_cache, sha256_file(seeded_weights))
    assert cli.main(["export-graph", "--weights", str(seeded_weights), "--out", str(folder),
                     "--triton", str(tmp_path / "models"), "--triton-device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["triton"] == [str(tmp_path / "models" / f"stya2k_{g}" / "config.pbtxt")
                                for g in ("encoder", "transfer", "decoder")]
    assert "KIND_CPU" in (tmp_path / "models" / "stya2k_decoder" / "config.pbtxt").read_text()
