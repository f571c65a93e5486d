"""The client distribution (clients/python): installed alone into a fresh venv without torch, it talks to a real
server, library and command line alike."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_helpers import RunningServer, image_bytes, start_server
from video_clips import make_clip

import stya2k_client

ROOT = Path(__file__).resolve().parents[2]
CLIENT_PROJECT = ROOT / "clients" / "python"
# pip's words when the package index cannot be reached: the test skips (with the reason) instead of failing.
OFFLINE = re.compile(r"Could not fetch URL|NewConnectionError|Temporary failure in name resolution|No matching "
                     r"distribution found for (setuptools|httpx)|Network is unreachable")  # fmt: skip


def _version(pyproject: Path) -> str:
    return str(tomllib.loads(pyproject.read_text())["project"]["version"])


def test_the_client_is_versioned_with_the_server_and_needs_httpx_only() -> None:
    client = tomllib.loads((CLIENT_PROJECT / "pyproject.toml").read_text())["project"]
    assert _version(CLIENT_PROJECT / "pyproject.toml") == _version(ROOT / "pyproject.toml") == stya2k_client.__version__
    assert [re.split(r"[=<>~! \[]", dep)[0] for dep in client["dependencies"]] == ["httpx"]


def test_service_client_is_the_same_client() -> None:
    import service.client

    assert service.client.Client is stya2k_client.Client and service.client.Preset is stya2k_client.Preset


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the client distribution and its dependencies (from the package index)."""
    where = tmp_path_factory.mktemp("client-venv")
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, capture_output=True)
    python = where / "bin" / "python"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(CLIENT_PROJECT)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    if installed.returncode != 0:
        if OFFLINE.search(installed.stderr):
            pytest.skip(f"the package index is unreachable: {installed.stderr.strip().splitlines()[-1]}")
        raise AssertionError(f"pip install ./clients/python failed:\n{installed.stderr}")
    return where


@pytest.fixture(scope="module")
def client_server() -> Iterator[RunningServer]:
    running = start_server(max_batch_size=4)
    yield running
    running.stop()


def _run(venv: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


SCRIPT = textwrap.dedent("""
    import asyncio, sys
    import stya2k_client
    from stya2k_client import AsyncClient, Client, InvalidParameter, Preset
    url = sys.argv[1]
    assert "torch" not in sys.modules
    with Client(url) as client:
        names = [style["name"] for style in client.styles()]
        assert "starry_night" in names, names
        image = client.stylize("content.png", Preset("starry_night"), max_side=64)
        assert image.size == (64, 48), image.size
        blend = client.interpolate("content.png", [Preset(names[1]), "style.png"], weights=[0.7, 0.3])
        assert blend.data[:4] == b"\\x89PNG"
        try:
            client.stylize("content.png", Preset("no_such_painting"))
        except InvalidParameter as exc:
            assert "starry_night" in exc.message
        else:
            raise AssertionError("an unknown preset was accepted")
        job = client.submit("content.png", [Preset(names[2]), Preset(names[3])], mode="interpolate",
                            weights=[1, 1], max_side=64)
        reports = []
        job.wait(timeout=120, on_progress=reports.append, poll_s=0.05)
        assert reports[-1].state == "done" and job.result().size == (64, 48)
        video = client.submit_video("clip.mp4", Preset("great_wave"), max_side=64)
        video.wait(timeout=120, poll_s=0.05)
        assert video.result().frames == 3
    async def main():
        async with AsyncClient(url) as client:
            return await client.stylize("content.png", Preset("starry_night"), format="jpeg")
    assert asyncio.run(main()).format == "jpeg"
    print("ok", stya2k_client.__version__)
""")


@pytest.mark.slow
def test_the_client_alone_talks_to_a_real_server(venv: Path, client_server: RunningServer, tmp_path: Path) -> None:
    python = str(venv / "bin" / "python")
    no_torch = _run(venv, python, "-c", "import torch", cwd=tmp_path)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    (tmp_path / "content.png").write_bytes(image_bytes((80, 60)))
    (tmp_path / "style.png").write_bytes(image_bytes((64, 64), color=(250, 200, 10)))
    (tmp_path / "clip.mp4").write_bytes(make_clip(frames=3, audio=None))
    (tmp_path / "script.py").write_text(SCRIPT)
    library = _run(venv, python, "script.py", client_server.url, cwd=tmp_path)
    assert library.returncode == 0 and library.stdout.strip() == f"ok {stya2k_client.__version__}", library.stderr

    command = str(venv / "bin" / "stya2k-client")
    listed = _run(venv, command, "--url", client_server.url, "styles", cwd=tmp_path)
    assert listed.returncode == 0 and '"name": "starry_night"' in listed.stdout, listed.stderr
    made = _run(venv, command, "--url", client_server.url, "stylize", "content.png", "--style-preset", "great_wave",
                "-o", "out/result.jpg", cwd=tmp_path)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "out" / "result.jpg").read_bytes()[:2] == b"\xff\xd8"
    unknown = _run(venv, command, "--url", client_server.url, "stylize", "content.png", "--style-preset", "nope",
                   "-o", "x.png", cwd=tmp_path)  # fmt: skip
    assert unknown.returncode == 1 and "'nope' is not a preset style" in unknown.stderr
    usage = _run(venv, command, "--url", client_server.url, "interpolate", "content.png", "style.png", "-o", "x.png",
                 cwd=tmp_path)  # fmt: skip
    assert usage.returncode == 2 and "at least 2 style" in usage.stderr
