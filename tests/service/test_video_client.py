"""The Python client's video jobs (``submit_video``) against a real server: sync and async submit, progress in
frames, the mp4 result, typed errors at submission, cancellation. Clips are made in the test (video_clips)."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import pytest
from service_helpers import RunningServer, image_bytes
from video_clips import describe, make_clip

from service.client import (
    AsyncClient,
    AsyncVideoJob,
    BadRequest,
    Client,
    InvalidParameter,
    JobCancelled,
    JobNotDone,
    JobStatus,
    StylizedVideo,
    UnsupportedMediaType,
    VideoJob,
    read_video,
)

LONG_FRAMES = 300  # ~15 s of model work on 2 cores: long enough to be cancelled while it runs


@pytest.fixture(scope="module")
def style() -> bytes:
    return image_bytes((64, 64), color=(250, 120, 10))


@pytest.fixture(scope="module")
def clip() -> bytes:
    return make_clip(frames=6)  # 64x48 at 12 fps, with an AAC tone


def test_submit_video_waits_with_progress_in_frames_and_returns_the_mp4(
    server: RunningServer, clip: bytes, style: bytes, tmp_path: Path
) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(clip)
    reports: list[JobStatus] = []
    with Client(server.url) as client:
        job = client.submit_video(path, style)  # a path, like every image input
        assert isinstance(job, VideoJob) and job.format == "mp4"
        assert (job.last.kind, job.last.unit, job.last.total) == ("video", "frames", 6)
        done = job.wait(timeout=120, on_progress=reports.append, poll_s=0.05)
        assert done.state == "done" and (done.done, done.total) == (6, 6)
        assert all(r.unit == "frames" for r in reports) and [r.done for r in reports] == sorted(r.done for r in reports)
        assert done.result is not None and done.result["format"] == "mp4" and done.result["frames"] == 6
        assert done.result["audio"] == "copied aac" and done.result["frame_rate"] == "12/1"
        video = job.result()
        assert isinstance(video, StylizedVideo) and video.size == (64, 48) and video.frames == 6
        assert video.details["fps"] == 12.0 and video.format == "mp4"
        out = describe(video.save(tmp_path / "out.mp4").read_bytes())
        assert (out["codec"], out["frames"], out["size"]) == ("h264", 6, (64, 48))
        again = client.job(job.id)  # a video job looked up by id is a VideoJob too
        assert isinstance(again, VideoJob) and again.result().data == video.data


def test_several_styles_are_interpolated_with_equal_or_given_weights(server: RunningServer, style: bytes) -> None:
    other = image_bytes((64, 64), color=(10, 60, 240))
    clip = make_clip(frames=4, audio=None)
    with Client(server.url) as client:
        equal = client.submit_video(io.BytesIO(clip), [style, other], max_side=64, style_fit="whole")
        weighted = client.submit_video(clip, [style, other], weights=[0.2, 0.8], alpha=0.7, preserve_color=True)
        for job in (equal, weighted):
            assert job.last.raw["mode"] == "interpolate"
            assert job.wait(timeout=120, poll_s=0.05).result["frames"] == 4  # type: ignore[index]
        assert describe(equal.result().data)["frames"] == describe(weighted.result().data)["frames"] == 4
        with pytest.raises(InvalidParameter, match="weights"):  # weights blend several styles
            client.submit_video(clip, style, weights=[1.0])


def test_bad_videos_and_options_raise_typed_errors_at_submission(
    server: RunningServer, clip: bytes, style: bytes, tmp_path: Path
) -> None:
    with Client(server.url) as client:
        with pytest.raises(BadRequest) as not_video:
            client.submit_video(b"hello world" * 50, style)
        assert not_video.value.code == "invalid_video" and "not a readable video" in not_video.value.message
        variable = make_clip(variable_rate=True, audio=None)
        with pytest.raises(UnsupportedMediaType) as unsupported:
            client.submit_video(variable, style)
        assert unsupported.value.code == "unsupported_video" and "variable frame rate" in unsupported.value.message
        with pytest.raises(InvalidParameter, match="smoothing"):
            client.submit_video(clip, style, smoothing=1.5)
        with pytest.raises(InvalidParameter, match="max_side"):
            client.submit_video(clip, style, max_side=99_999)
        with pytest.raises(ValueError, match="style_fit"):
            client.submit_video(clip, style, style_fit="stretch")
        with pytest.raises(ValueError, match="cannot read"):
            client.submit_video(tmp_path / "missing.mp4", style)
        with pytest.raises(TypeError, match="video"):
            client.submit_video(42, style)  # type: ignore[arg-type]


def test_read_video_keeps_the_file_name(tmp_path: Path, clip: bytes) -> None:
    path = tmp_path / "holiday.mov"
    path.write_bytes(clip)
    assert read_video(path) == ("holiday.mov", clip) == read_video(str(path))
    assert read_video(clip) == ("video", clip) == read_video(io.BytesIO(clip))


def test_a_running_video_job_is_cancelled_from_the_sync_client(server: RunningServer, style: bytes) -> None:
    with Client(server.url) as client:
        job = client.submit_video(make_clip(frames=LONG_FRAMES, rate=30, audio=None), style)
        with pytest.raises(JobNotDone):
            job.result()
        deadline = time.monotonic() + 60
        while job.status().done == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert job.last.state == "running" and 0 < job.last.done < LONG_FRAMES, job.last
        assert job.cancel().state in ("running", "cancelled")
        with pytest.raises(JobCancelled):
            job.wait(timeout=60, poll_s=0.05)
        assert job.last.state == "cancelled" and job.last.done < LONG_FRAMES


def test_async_client_submits_waits_and_cancels_video_jobs(server: RunningServer, clip: bytes, style: bytes) -> None:
    async def scenario() -> None:
        reports: list[JobStatus] = []
        async with AsyncClient(server.url) as client:
            job = await client.submit_video(clip, [style], smoothing=0.0, max_side=64)
            assert isinstance(job, AsyncVideoJob) and job.last.unit == "frames"
            done = await job.wait(timeout=120, on_progress=reports.append, poll_s=0.05)
            assert done.state == "done" and reports[-1].done == reports[-1].total == 6
            video = await job.result()
            assert video.size == (64, 48) and video.frames == 6 and video.data[4:8] == b"ftyp"
            assert isinstance(await client.job(job.id), AsyncVideoJob)
            slow = await client.submit_video(make_clip(frames=LONG_FRAMES, rate=30, audio=None), style)
            await slow.cancel()  # queued or just started: it stops before its next batch of frames
            with pytest.raises(JobCancelled):
                await slow.wait(timeout=60, poll_s=0.05)
            assert slow.last.done < LONG_FRAMES

    asyncio.run(scenario())
