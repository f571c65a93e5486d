"""Video jobs end to end (issue 20): a real uvicorn server, real HTTP, clips made in the test with PyAV.

Round trips in the containers the API names (frame count, rate, size and audio kept), the errors of bad input at
submission, the limits, progress in frames, cancellation and temporal smoothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import httpx
import numpy as np
import pytest
from service_helpers import RunningServer, image_bytes, start_server
from video_clips import audio_only, describe, make_clip

import model

VIDEO_LIMITS = {"video_max_frames": 400, "video_max_seconds": 30.0, "video_max_input_pixels": 320 * 240}


def _shipped_weights() -> str:
    try:
        return "" if model.DEFAULT_WEIGHTS.is_file() else "random"
    except model.CheckpointError:
        return "random"


@pytest.fixture(scope="module")
def video_server() -> Iterator[RunningServer]:
    # the shipped weights: random ones draw a near-flat field, which no style or smoothing changes visibly
    running = start_server(weights=_shipped_weights() or None, max_wait_ms=5, jobs_queue_size=2,
                           replica_id="video-1", **VIDEO_LIMITS)  # fmt: skip
    yield running
    running.stop()


@pytest.fixture(scope="module")
def style() -> bytes:
    return image_bytes((64, 64), color=(250, 120, 10))


def submit(server: RunningServer, clip: bytes, styles: list[bytes], name: str = "clip.mp4",
           **fields: Any) -> httpx.Response:  # fmt: skip
    files = [("video", (name, clip, "application/octet-stream"))]
    files += [("style", (f"s{i}.png", s, "image/png")) for i, s in enumerate(styles)]
    data = {"mode": "stylize", **{k: str(v) for k, v in fields.items()}}
    return httpx.post(server.url + "/v1/jobs", files=files, data=data, timeout=60)


def wait(server: RunningServer, path: str, until: tuple[str, ...] = ("done", "failed", "cancelled"),
         timeout_s: float = 120) -> dict[str, Any]:  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        view = httpx.get(server.url + path, timeout=30).json()
        if view["state"] in until:
            return view
        time.sleep(0.05)
    raise AssertionError(f"job {path} not {until} within {timeout_s} s: {view}")


def run(server: RunningServer, clip: bytes, styles: list[bytes], **fields: Any) -> tuple[dict[str, Any], bytes]:
    accepted = submit(server, clip, styles, **fields)
    assert accepted.status_code == 202, accepted.text
    view = wait(server, accepted.headers["location"])
    assert view["state"] == "done", view
    result = httpx.get(server.url + view["links"]["result"], timeout=30)
    assert result.status_code == 200 and result.headers["content-type"] == "video/mp4"
    return view, result.content


# ---------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize(
    ("clip_kwargs", "audio"),
    [
        ({}, "copied aac"),  # mp4: H.264 + AAC
        ({"container": "webm", "codec": "libvpx-vp9", "audio": "libopus"}, "copied opus"),
        ({"container": "mov", "codec": "mpeg4"}, "copied aac"),
        ({"container": "matroska", "codec": "libx264", "audio": "pcm_s16le"}, "transcoded pcm_s16le to aac"),
        ({"container": "gif", "codec": "gif", "audio": None}, "none"),
    ],
    ids=["mp4", "webm", "mov", "mkv-pcm", "gif"],
)
def test_round_trip_keeps_frames_rate_size_and_audio(
    video_server: RunningServer, style: bytes, clip_kwargs: dict[str, Any], audio: str
) -> None:
    clip = make_clip(frames=10, **clip_kwargs)
    source = describe(clip)
    view, body = run(video_server, clip, [style])
    out = describe(body)
    assert out["codec"] == "h264" and "mp4" in str(out["format"])
    assert out["frames"] == source["frames"] == 10 == view["result"]["frames"]
    assert view["kind"] == "video" and view["progress"] == {"done": 10, "total": 10, "unit": "frames"}
    assert out["size"] == source["size"] == (view["result"]["width"], view["result"]["height"])
    # the rate the clip was made at (12 fps); a GIF's centisecond delays (8, 8, 9, ...) only approximate it, and
    # FFmpeg's own guess for the GIF (12.5) is further off than the mean interval the probe measures
    assert abs(float(out["rate"]) - 12) < 0.01 * 12, (out["rate"], source["rate"])
    assert view["result"]["audio"] == audio
    if audio.startswith("copied"):
        assert out["audio_packets"] == source["audio_packets"]  # untouched, packet for packet
    elif audio.startswith("transcoded"):
        assert out["audio_codec"] == "aac" and out["audio_packets"]
    else:
        assert out["audio_codec"] is None
    first = out["first_frame"]
    assert first is not None and float(np.abs(first.astype(np.float32) - source["first_frame"]).mean()) > 1.0


def test_ntsc_rate_is_kept_exactly_and_max_side_scales_to_even_sides(video_server: RunningServer,
                                                                     style: bytes) -> None:  # fmt: skip
    clip = make_clip(frames=8, rate=Fraction(30000, 1001), size=(150, 100), audio=None)
    view, body = run(video_server, clip, [style], max_side=75)
    out = describe(body)
    assert out["rate"] == Fraction(30000, 1001) and view["result"]["frame_rate"] == "30000/1001"
    assert out["size"] == (74, 50)  # 75 x 50 -> even sides for H.264 4:2:0


def test_rotated_phone_clip_comes_out_upright(video_server: RunningServer, style: bytes) -> None:
    clip = make_clip(frames=4, size=(64, 48), rotation=90, audio=None)
    view, body = run(video_server, clip, [style])
    assert describe(body)["size"] == (48, 64) == (view["result"]["width"], view["result"]["height"])


def test_interpolated_styles_over_a_video(video_server: RunningServer, style: bytes) -> None:
    other = image_bytes((64, 64), color=(10, 60, 240))
    clip = make_clip(frames=4, audio=None)
    _, one = run(video_server, clip, [style])
    _, mixed = run(video_server, clip, [style, other], mode="interpolate", weights="0.5,0.5")
    a, b = describe(one)["first_frame"], describe(mixed)["first_frame"]
    assert a is not None and b is not None and float(np.abs(a.astype(np.float32) - b).mean()) > 0.5


# ---------------------------------------------------------------------------------------------- bad input
def _error(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()["error"]
    return response.status_code, body["code"], body["message"]


def test_bad_videos_are_refused_at_submission_with_what_is_wrong(video_server: RunningServer, style: bytes) -> None:
    faststart = make_clip(frames=12)
    cases = {
        "not a video": (b"hello world" * 50, 400, "invalid_video", "not a readable video"),
        "audio only": (audio_only(), 400, "invalid_video", "no video stream"),
        "a photo": (image_bytes((64, 48)), 400, "invalid_video", "still image (png)"),
        "a jpeg": (image_bytes((64, 48), "JPEG"), 400, "invalid_video", "still image"),
        "truncated": (faststart[: len(faststart) // 2], 400, "invalid_video", ""),
        "variable rate": (make_clip(variable_rate=True, audio=None), 415, "unsupported_video", "variable frame rate"),
        "too many frames": (make_clip(frames=401, rate=50, size=(16, 16), audio=None), 413, "video_too_large",
                            "STYA2K_VIDEO_MAX_FRAMES"),
        "frame too big": (make_clip(frames=2, size=(400, 300), audio=None), 413, "video_too_large",
                          "STYA2K_VIDEO_MAX_INPUT_PIXELS"),
    }  # fmt: skip
    before = video_server.metric("stya2k_jobs_queued")
    for name, (clip, status, code, words) in cases.items():
        got = _error(submit(video_server, clip, [style]))
        assert got[:2] == (status, code) and words in got[2], (name, got)
    assert video_server.metric("stya2k_jobs_queued") == before


def test_a_truncated_webm_is_refused(video_server: RunningServer, style: bytes) -> None:
    clip = make_clip(container="webm", codec="libvpx-vp9", audio=None, frames=24)
    status, code, message = _error(submit(video_server, clip[: len(clip) // 2], [style], name="cut.webm"))
    assert (status, code) == (400, "invalid_video") and "truncated" in message, message


def test_wrong_fields_for_a_video_are_422(video_server: RunningServer, style: bytes) -> None:
    clip = make_clip(frames=2, audio=None)
    assert "not both" in _error(httpx.post(
        video_server.url + "/v1/jobs", timeout=30, data={"mode": "stylize"},
        files=[("video", clip), ("content", image_bytes()), ("style", style)],
    ))[2]  # fmt: skip
    status, _, message = _error(submit(video_server, clip, [style, style], mode="multistyle"))
    assert status == 422 and "still images only" in message
    status, _, message = _error(submit(video_server, clip, [style], format="png"))
    assert status == 422 and "always an H.264 mp4" in message
    status, _, message = _error(submit(video_server, clip, [style], smoothing="1.5"))
    assert status == 422 and "smoothing" in message
    photo = httpx.post(video_server.url + "/v1/jobs", timeout=30, data={"mode": "stylize", "smoothing": "0.5"},
                       files=[("content", image_bytes()), ("style", style)])  # fmt: skip
    assert _error(photo)[0] == 422 and "video field only" in _error(photo)[2]


def test_video_byte_and_duration_limits(server_factory: Any, style: bytes) -> None:
    small = server_factory(video_max_bytes=4096, video_max_seconds=0.5)
    clip = make_clip(frames=12, audio=None, size=(32, 32))
    status, code, message = _error(submit(small, make_clip(frames=30, size=(96, 96)), [style]))
    assert (status, code) == (413, "video_too_large") and "STYA2K_VIDEO_MAX_BYTES" in message
    assert "the limit is 4096 bytes (0.00391 MiB)" in message
    status, code, message = _error(submit(small, clip, [style]))
    assert (status, code) == (413, "video_too_large") and "STYA2K_VIDEO_MAX_SECONDS" in message


def test_info_states_the_video_limits(video_server: RunningServer) -> None:
    limits = httpx.get(video_server.url + "/v1/info", timeout=30).json()["limits"]
    assert limits["video_max_frames"] == VIDEO_LIMITS["video_max_frames"]
    assert limits["video_max_input_pixels"] == VIDEO_LIMITS["video_max_input_pixels"]
    assert {"video_max_side", "video_max_seconds", "video_max_bytes"} <= set(limits)


def test_the_body_limit_applies_first_when_it_is_lower(server_factory: Any, style: bytes) -> None:
    small_bodies = server_factory(max_body_bytes=8192)  # below STYA2K_VIDEO_MAX_BYTES: still a valid setting
    status, code, message = _error(submit(small_bodies, make_clip(frames=30, size=(96, 96)), [style]))
    assert (status, code) == (413, "body_too_large") and "8192 bytes (0.00781 MiB)" in message


def test_an_install_without_pyav_answers_video_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    from service import video
    from service.errors import VideoUnavailable

    monkeypatch.setattr(video, "av", None)
    with pytest.raises(VideoUnavailable, match=r"pip install av==18\.1\.0") as caught:
        video.probe(make_clip(frames=2, audio=None), video.VideoLimits(10**6, 10.0, 10, 10**6))
    assert caught.value.status == 501


# ---------------------------------------------------------------------------------------------- progress, cancel
def test_progress_counts_frames_and_a_running_video_can_be_cancelled(video_server: RunningServer,
                                                                     style: bytes) -> None:  # fmt: skip
    clip = make_clip(frames=300, rate=30, size=(64, 48), audio=None)
    accepted = submit(video_server, clip, [style])
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["progress"] == {"done": 0, "total": 300, "unit": "frames"}
    path = accepted.headers["location"]
    running = wait(video_server, path, until=("running", "done"))
    deadline = time.monotonic() + 60
    while running["progress"]["done"] == 0 and time.monotonic() < deadline:
        running = httpx.get(video_server.url + path, timeout=30).json()
    assert running["state"] == "running" and 0 < running["progress"]["done"] < 300, running
    # a sync request is served while the video runs (it takes its turn between two batches of frames)
    sync = httpx.post(video_server.url + "/v1/stylize", files={"content": image_bytes(), "style": style}, timeout=60)
    assert sync.status_code == 200
    cancel = httpx.delete(video_server.url + path, timeout=30)
    assert cancel.status_code in (200, 202)
    ended = wait(video_server, path)
    assert ended["state"] == "cancelled" and ended["progress"]["done"] < 300, ended
    assert httpx.get(video_server.url + path + "/result", timeout=30).status_code == 409


# ---------------------------------------------------------------------------------------------- smoothing
def test_smoothing_changes_the_frames_after_the_first(video_server: RunningServer, style: bytes) -> None:
    pytest.importorskip("cv2", reason="temporal smoothing uses OpenCV's optical flow")
    clip = make_clip(frames=6, audio=None, size=(96, 64))
    _, plain = run(video_server, clip, [style])
    view, smooth = run(video_server, clip, [style], smoothing=0.6)
    assert view["result"]["smoothing"] == 0.6
    a, b = _frames(plain), _frames(smooth)
    assert len(a) == len(b) == 6
    assert float(np.abs(a[0] - b[0]).mean()) < 1.5  # the first frame has nothing to blend with
    assert max(float(np.abs(x - y).mean()) for x, y in zip(a[1:], b[1:], strict=True)) > 0.2


def _frames(data: bytes) -> list[np.ndarray]:
    import io

    import av

    with av.open(io.BytesIO(data)) as container:
        return [f.to_ndarray(format="rgb24").astype(np.float32) for f in container.decode(video=0)]
