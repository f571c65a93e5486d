"""Issue 28: the attacks on the video and jobs surface, each against a real server (uvicorn on 127.0.0.1, real
HTTP), with the hostile uploads of bench/job_attacks.py at small sizes. Each failed on the code before the fix:
an SDP upload opened UDP sockets and blocked ~20 s, an ffconcat playlist read a server file, frames that grew
after the first ones were decoded at any size, 1 px frames were upscaled, an unknown audio codec answered an
AttributeError, a job's work was never compared with its time limit, multistyle jobs held memory outside every
budget, and a client that left right after its upload orphaned its job."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from service_helpers import RunningServer, image_bytes, start_server

from bench.job_attacks import (
    UdpListener,
    ffconcat_playlist,
    free_udp_port,
    growing_frames_ts,
    multistyle_files,
    screen_gif,
    sdp_session,
    tiny_frames_gif,
    unknown_audio_mkv,
    video_job,
)
from bench.reliability import Probe, png_bytes
from service import video as video_module

SMALL_FRAMES = 320 * 240


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    # warm-up on: it times one pass, so jobs' model time is estimated at submission as in a deployment
    running = start_server(warmup=True, job_timeout_s=20, video_max_input_pixels=SMALL_FRAMES, jobs_queue_size=4,
                           tile_px=64, tile_margin_px=64, jobs_max_side=1024)  # fmt: skip
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def liveness(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every attack on the shared server runs under a liveness probe (GET /health/live every 50 ms on a new
    connection, as a kubelet would): no probe may go unanswered for 5 s while the attack is handled."""
    if "server" not in request.fixturenames:
        yield
        return
    server = request.getfixturevalue("server")
    with Probe(_port(server)) as probe:
        yield
    assert probe.failures == [], probe.summary()
    assert probe.latencies, "the probe never got an answer"


def _error(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()["error"]
    return response.status_code, body["code"], body["message"]


def _wait(server: RunningServer, path: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        view = httpx.get(server.url + path, timeout=30).json()
        if view["state"] in ("done", "failed", "cancelled"):
            return view
        time.sleep(0.1)
    raise AssertionError(f"job {path} did not end in {timeout_s} s")


def _port(server: RunningServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


def test_an_sdp_upload_is_refused_at_once_and_opens_no_socket(server: RunningServer) -> None:
    port = free_udp_port()
    listener = UdpListener(port)
    with Probe(_port(server)) as probe:
        for _ in range(4):
            started = time.monotonic()
            status, code, message = _error(video_job(server.url, sdp_session(port), name="x.sdp"))
            assert time.monotonic() - started < 5.0  # was ~20 s, with a UDP socket open on the uploader's port
            assert (status, code) == (415, "unsupported_video") and "accepted: mp4" in message
            assert not listener.bound()
    assert probe.failures == [] and probe.latencies


def test_an_ffconcat_playlist_reads_no_server_file_and_cannot_tell_paths_apart(server: RunningServer) -> None:
    answers = {path: _error(video_job(server.url, ffconcat_playlist(path), name="x.ffconcat"))
               for path in ("/etc/hostname", "/no/such/file", "pyproject.toml")}  # fmt: skip
    assert len(set(answers.values())) == 1, answers  # the same answer whether the file exists or not
    status, code, message = answers["/etc/hostname"]
    assert (status, code) == (415, "unsupported_video") and "container" in message
    assert server.metric("stya2k_jobs_queued") == 0


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_frames_that_grow_past_the_limit_after_the_header_are_refused_at_submission(
    server: RunningServer, codec: str
) -> None:
    clip = growing_frames_ts((64, 48), 20, (640, 480), 3, codec)  # the header says 64x48; a keyframe says more
    started = time.monotonic()
    status, code, message = _error(video_job(server.url, clip, name="x.ts", max_side=64))
    assert time.monotonic() - started < 5.0
    assert (status, code) == (413, "video_too_large") and "STYA2K_VIDEO_MAX_INPUT_PIXELS" in message, message
    assert server.metric("stya2k_jobs_queued") == 0


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_past_the_probes_keyframe_budget_every_decoded_frame_is_still_checked(
    server: RunningServer, codec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(video_module, "KEYFRAME_PROBE_S", -1.0)  # the probe stops at once: the job must catch it
    clip = growing_frames_ts((64, 48), 20, (640, 480), 3, codec)
    accepted = video_job(server.url, clip, name="x.ts", max_side=64)
    assert accepted.status_code == 202, accepted.text
    view = _wait(server, accepted.headers["location"])
    assert view["state"] == "failed" and view["error"]["code"] == "video_too_large", view
    assert "STYA2K_VIDEO_MAX_INPUT_PIXELS" in view["error"]["message"] and "frame 2" in view["error"]["message"]
    if codec == "libx264":  # mpeg4's decoder forgets the size it refused
        assert "640x480" in view["error"]["message"]
    assert view["progress"]["done"] < view["progress"]["total"]


@pytest.mark.parametrize("side", [1, 2])
def test_frames_below_the_minimum_side_are_refused_not_upscaled(server: RunningServer, side: int) -> None:
    status, code, message = _error(video_job(server.url, tiny_frames_gif(side), name="x.gif"))
    assert (status, code) == (400, "invalid_video") and f"{side}x{side} px, too small" in message


def test_an_audio_track_of_an_unknown_codec_is_a_clear_415(server: RunningServer) -> None:
    status, code, message = _error(video_job(server.url, unknown_audio_mkv(), name="x.mkv"))
    assert (status, code) == (415, "unsupported_video"), message
    assert "audio track" in message and "NoneType" not in message


def test_a_job_whose_model_time_exceeds_the_limit_is_refused_at_submission(server: RunningServer) -> None:
    rate = httpx.get(server.url + "/v1/info", timeout=30).json()["jobs"]["compute_rate"]
    assert rate["seconds_per_megapixel"] and rate["seconds_per_megapixel"] > 0  # measured at start-up
    started = time.monotonic()
    long_gif = screen_gif(3600, (320, 240))  # 83 KB-class: a 1 px change per frame, 72 s at 50 fps
    status, code, message = _error(video_job(server.url, long_gif, name="x.gif", max_side=64))
    assert time.monotonic() - started < 5.0
    assert (status, code) == (413, "job_too_long") and "STYA2K_JOB_TIMEOUT_S" in message, message
    short = video_job(server.url, screen_gif(6, (320, 240)), name="y.gif", max_side=64)
    assert short.status_code == 202, short.text
    assert _wait(server, short.headers["location"])["state"] == "done"


def test_image_jobs_with_new_styles_do_not_move_the_rate_that_judges_other_jobs(server: RunningServer) -> None:
    """A batch's time includes encoding its new styles (and any sync requests in it): image jobs are not rate
    samples, so a client cannot make the server refuse others' long jobs by sending many new styles."""
    before = httpx.get(server.url + "/v1/info", timeout=30).json()["jobs"]["compute_rate"]
    for seed in range(3):
        styles = [("style", (f"s{i}.png", image_bytes((64, 64), color=(seed * 60, i * 50, 90)), "image/png"))
                  for i in range(4)]  # fmt: skip
        job = httpx.post(server.url + "/v1/jobs", data={"mode": "interpolate", "weights": "1,1,1,1", "max_side": "64"},
                         files=[("content", image_bytes((64, 64))), *styles], timeout=60)  # fmt: skip
        assert job.status_code == 202, job.text
        assert _wait(server, job.headers["location"])["state"] == "done"
    assert httpx.get(server.url + "/v1/info", timeout=30).json()["jobs"]["compute_rate"] == before


def test_multistyle_jobs_hold_their_masks_within_the_jobs_memory_budget(style_png: bytes) -> None:
    # a 512 px multistyle job with 4 masks reserves ~17 MB while its weights are made, then holds ~8 MB
    budget = 22 * 2**20
    running = start_server(jobs_memory_bytes=budget, jobs_max_side=1024, jobs_queue_size=8, tile_px=64,
                           tile_margin_px=64)  # fmt: skip
    try:
        slow = httpx.post(running.url + "/v1/jobs", timeout=60, data={"mode": "stylize", "max_side": "512"},
                          files=[("content", image_bytes((512, 512), pattern=True)), ("style", style_png)])
        assert slow.status_code == 202, slow.text  # 64 tile steps: the worker is busy while we submit
        data = {"mode": "multistyle", "max_side": "512", "format": "jpeg"}
        first = httpx.post(running.url + "/v1/jobs", files=multistyle_files(512, 4), data=data, timeout=60)
        assert first.status_code == 202, first.text
        held = running.state.jobs.memory.used
        assert held <= budget
        second = httpx.post(running.url + "/v1/jobs", files=multistyle_files(512, 4), data=data, timeout=60)
        status, code, message = _error(second)
        assert (status, code) == (429, "job_queue_full") and "STYA2K_JOBS_MEMORY_BYTES" in message
        assert "Retry-After" in second.headers
        assert running.state.jobs.memory.used == held  # the refused job released what it reserved
        info = httpx.get(running.url + "/v1/info", timeout=30).json()["jobs"]
        assert info["memory_bytes"] == held and info["memory_capacity_bytes"] == budget
        too_big = httpx.post(running.url + "/v1/jobs", files=multistyle_files(1024, 4),
                             data={**data, "max_side": "1024"}, timeout=60)  # fmt: skip
        status, code, message = _error(too_big)
        assert (status, code) == (413, "job_too_large") and "MiB" in message
        for response in (slow, first):
            httpx.delete(running.url + response.headers["location"], timeout=30)
        _wait(running, first.headers["location"])
        assert running.state.jobs.memory.used < held  # an ended job gives its share back
    finally:
        running.stop()


def test_a_client_that_leaves_right_after_its_upload_leaves_no_orphaned_job(server: RunningServer) -> None:
    boundary = "attackboundary"
    # a 16 Mpx photo: its decode keeps the job in preparation for a while after the body has arrived
    parts = [("mode", None, b"stylize"), ("max_side", None, b"256"),
             ("content", "c.png", png_bytes(4000, 4000)), ("style", "s.png", image_bytes((64, 64)))]
    body = b""
    for name, filename, value in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    head = (f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
    cancelled_before = server.metric("stya2k_jobs_finished_total", 'outcome="cancelled"')
    with socket.create_connection(("127.0.0.1", _port(server))) as sock:
        sock.sendall(head + body)
        _until(lambda: _jobs(server)["preparing"] == 1)  # the whole body is in (leaving mid-body: an older test)
        sock.shutdown(socket.SHUT_RDWR)  # gone before the 202
    _until(lambda: _jobs(server)["preparing"] == 0)
    assert server.metric("stya2k_jobs_finished_total", 'outcome="cancelled"') == cancelled_before + 1
    assert server.metric("stya2k_jobs_queued") == 0 and _jobs(server)["running"] == 0


def _jobs(server: RunningServer) -> dict[str, Any]:
    return dict(httpx.get(server.url + "/v1/info", timeout=30).json()["jobs"])


def _until(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)
