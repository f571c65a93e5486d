"""The jobs API end to end: a real uvicorn server, real HTTP clients, tiny images and 64 px tiles.

With STYA2K_TILE_PX=64 / STYA2K_TILE_MARGIN_PX=64 a 192x128 job is 6 tiles (12 steps: a statistics pass and a
transfer pass), and a 512 px job runs long enough (128 steps) to be caught running, interleaved and cancelled.
"""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from PIL import Image
from service_helpers import RunningServer, start_server

import model
from service import cli
from service.client import AsyncClient, Client, JobCancelled, JobExpired, JobNotDone, JobStatus, QueueFull
from service.jobs import job_replica, new_job_id
from service.settings import Settings, SettingsError, hostname_replica_id

TILES = {"tile_px": 64, "tile_margin_px": 64}
SYNC_MAX_SIDE = 192  # the jobs server's sync endpoints; its jobs go up to JOBS_MAX_SIDE
JOBS_MAX_SIDE = 1024
SLOW_SIDE = 512  # 8 x 8 tiles of 64 px: 128 steps, tens of seconds on a CPU unless cancelled
REPLICA = "alpha-1"  # the jobs server's STYA2K_REPLICA_ID


def _shipped_weights() -> str:
    """The shipped weights draw real images (random weights draw a near-flat field, a weak comparison)."""
    try:
        return "" if model.DEFAULT_WEIGHTS.is_file() else "random"
    except model.CheckpointError:
        return "random"


def noise_png(size: tuple[int, int], seed: int) -> bytes:
    """A noisy image: every tile differs, so misplaced or mis-normalised tiles show."""
    rng = np.random.default_rng(seed)
    width, height = size
    base = np.linspace(0, 255, width, dtype=np.float32)[None, :, None] * np.ones((height, 1, 3), np.float32)
    pixels = np.clip(base * 0.5 + rng.integers(0, 128, (height, width, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float32)


@pytest.fixture(scope="module")
def jobs_server() -> Iterator[RunningServer]:
    weights = _shipped_weights()
    running = start_server(
        weights=weights or None,
        max_side=SYNC_MAX_SIDE,
        jobs_max_side=JOBS_MAX_SIDE,
        jobs_queue_size=1,
        max_wait_ms=5,
        replica_id=REPLICA,
        **TILES,
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def style() -> bytes:
    return noise_png((64, 64), seed=1)


def submit(server: RunningServer, content: bytes, styles: list[bytes], **fields: Any) -> httpx.Response:
    files = [("content", ("c.png", content))] + [("style", (f"s{i}.png", s)) for i, s in enumerate(styles)]
    data = {"mode": "stylize", **{k: str(v) for k, v in fields.items()}}
    return httpx.post(server.url + "/v1/jobs", files=files, data=data, timeout=60)


def status(server: RunningServer, path: str) -> dict[str, Any]:
    response = httpx.get(server.url + path, timeout=30)
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_for(server: RunningServer, path: str, until: Any, timeout_s: float = 120.0) -> dict[str, Any]:
    """Poll ``path`` until ``until(status)``; the statuses seen are in the result's ``_seen``."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = status(server, path)
        seen.append(body)
        if until(body):
            body["_seen"] = seen
            return body
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached the wanted state; last {seen[-1] if seen else None}")


def finished(body: dict[str, Any]) -> bool:
    return body["state"] not in ("queued", "running")


# ---------------------------------------------------------------------------------------------- the happy path
def test_tiled_job_progresses_through_its_steps_and_equals_the_sync_result(
    jobs_server: RunningServer, style: bytes
) -> None:
    content = noise_png((192, 128), seed=0)
    response = submit(jobs_server, content, [style], max_side=192, alpha=0.8)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["state"] in ("queued", "running") and re.fullmatch(rf"{REPLICA}\.[0-9a-f]{{32}}", accepted["id"])
    assert response.headers["location"] == accepted["links"]["self"] == f"/v1/jobs/{accepted['id']}"
    early = httpx.get(jobs_server.url + accepted["links"]["result"], timeout=30)
    assert early.status_code == 409 and early.json()["error"]["code"] == "job_not_done"
    assert "poll GET" in early.json()["error"]["message"]

    done = wait_for(jobs_server, response.headers["location"], finished)
    assert done["state"] == "done", done
    assert done["progress"] == {"done": 12, "total": 12, "unit": "steps"}  # 3 x 2 tiles, two passes
    steps = [body["progress"]["done"] for body in done["_seen"]]
    assert steps == sorted(steps) and steps[0] <= 1 and len(set(steps)) >= 4  # it moved, one step at a time
    timings = done["timings"]
    assert timings["running_s"] > 0 and timings["total_s"] >= timings["running_s"] >= 0
    assert done["result"]["width"] == 192 and done["result"]["height"] == 128 and done["error"] is None

    result = httpx.get(jobs_server.url + done["links"]["result"], timeout=30)
    assert result.status_code == 200 and result.headers["content-type"] == "image/png"
    assert result.headers["x-output-size"] == "192x128"
    with jobs_server.client() as client:
        sync = client.post(
            "/v1/stylize", files={"content": content, "style": style}, data={"max_side": "192", "alpha": "0.8"}
        )
    assert sync.status_code == 200, sync.text
    tiled, whole = pixels(result.content), pixels(sync.content)
    assert tiled.shape == whole.shape == (128, 192, 3)
    diff = np.abs(tiled - whole)
    assert diff.mean() <= 1.0 and np.quantile(diff, 0.99) <= 8.0
    if _shipped_weights() == "":
        assert whole.std() > 5  # a real image, so the comparison means something


def test_small_job_runs_in_one_pass_on_the_batcher(jobs_server: RunningServer, style: bytes) -> None:
    content = noise_png((64, 48), seed=2)
    response = submit(jobs_server, content, [style], max_side=64, format="webp")
    assert response.status_code == 202, response.text
    done = wait_for(jobs_server, response.headers["location"], finished)
    assert done["state"] == "done" and done["progress"] == {"done": 1, "total": 1, "unit": "steps"}
    result = httpx.get(jobs_server.url + done["links"]["result"], timeout=30)
    assert result.headers["content-type"] == "image/webp"
    with jobs_server.client() as client:
        sync = client.post("/v1/stylize", files={"content": content, "style": style},
                           data={"max_side": "64", "format": "webp"})  # fmt: skip
    assert np.abs(pixels(result.content) - pixels(sync.content)).mean() <= 1.0


# ---------------------------------------------------------------------------------------------- queue, cancel
def test_queue_full_cancel_queued_and_running_and_sync_requests_interleave(
    jobs_server: RunningServer, style: bytes
) -> None:
    slow = submit(jobs_server, noise_png((SLOW_SIDE, SLOW_SIDE), seed=3), [style], max_side=SLOW_SIDE)
    assert slow.status_code == 202, slow.text
    slow_path = slow.headers["location"]
    running = wait_for(jobs_server, slow_path, lambda b: b["state"] == "running" and b["progress"]["done"] >= 1)
    assert running["progress"]["total"] == 2 * 8 * 8

    # A sync request is served between two tiles: it completes while the job is still running.
    with jobs_server.client() as client:
        sync = client.post("/v1/stylize", files={"content": noise_png((64, 48), 4), "style": style})
    assert sync.status_code == 200, sync.text
    still = status(jobs_server, slow_path)
    assert still["state"] == "running" and still["progress"]["done"] < still["progress"]["total"]

    queued = submit(jobs_server, noise_png((64, 48), seed=5), [style], max_side=64)
    assert queued.status_code == 202 and queued.json()["state"] == "queued"
    accepted_before = jobs_server.metric("stya2k_http_requests_total", 'endpoint="/v1/jobs",status="202"')
    full = submit(jobs_server, noise_png((64, 48), seed=6), [style], max_side=64)
    assert full.status_code == 429 and full.json()["error"]["code"] == "job_queue_full"
    assert int(full.headers["retry-after"]) >= 1 and "STYA2K_JOBS_QUEUE_SIZE=1" in full.json()["error"]["message"]
    assert jobs_server.metric("stya2k_jobs_queued") == 1 and jobs_server.metric("stya2k_jobs_running") == 1
    assert jobs_server.metric("stya2k_http_requests_total", 'endpoint="/v1/jobs",status="202"') == accepted_before

    queued_path = queued.headers["location"]
    assert httpx.get(jobs_server.url + queued_path + "/result", timeout=30).status_code == 409
    cancelled = httpx.delete(jobs_server.url + queued_path, timeout=30)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"

    stopping = httpx.delete(jobs_server.url + slow_path, timeout=30)
    assert stopping.status_code in (200, 202), stopping.text
    ended = wait_for(jobs_server, slow_path, finished, timeout_s=60)
    assert ended["state"] == "cancelled" and ended["progress"]["done"] < ended["progress"]["total"]
    never_ran = status(jobs_server, queued_path)
    assert never_ran["state"] == "cancelled" and never_ran["timings"]["running_s"] is None
    assert never_ran["progress"]["done"] == 0
    after_cancel = httpx.get(jobs_server.url + slow_path + "/result", timeout=30)
    assert after_cancel.status_code == 409 and "cancelled" in after_cancel.json()["error"]["message"]
    assert jobs_server.metric("stya2k_jobs_running") == 0 and jobs_server.metric("stya2k_jobs_queued") == 0
    assert jobs_server.metric("stya2k_jobs_finished_total", 'outcome="cancelled"') >= 2


def test_unknown_job_is_404_everywhere(jobs_server: RunningServer) -> None:
    for method, path in (("GET", "/v1/jobs/nope"), ("GET", "/v1/jobs/nope/result"), ("DELETE", "/v1/jobs/0123")):
        response = httpx.request(method, jobs_server.url + path, timeout=30)
        assert response.status_code == 404 and response.json()["error"]["code"] == "job_not_found", response.text
        assert "memory of the server that accepted" in response.json()["error"]["message"]


def test_an_id_of_another_replica_is_404_naming_the_replica_that_holds_it(jobs_server: RunningServer) -> None:
    foreign = "beta-2." + "ab" * 16
    for method, path in (("GET", f"/v1/jobs/{foreign}"), ("GET", f"/v1/jobs/{foreign}/result"),
                         ("DELETE", f"/v1/jobs/{foreign}")):  # fmt: skip
        response = httpx.request(method, jobs_server.url + path, timeout=30)
        assert response.status_code == 404 and response.json()["error"]["code"] == "job_not_found", response.text
        message = response.json()["error"]["message"]
        assert "held by replica 'beta-2'" in message and f"this is replica '{REPLICA}'" in message
    # Its own replica part but no such job: the plain message, naming this replica.
    response = httpx.get(f"{jobs_server.url}/v1/jobs/{REPLICA}.{'cd' * 16}", timeout=30)
    assert response.status_code == 404 and f"replica '{REPLICA}'" in response.json()["error"]["message"]
    assert httpx.get(jobs_server.url + "/v1/info", timeout=30).json()["replica_id"] == REPLICA


def test_job_ids_carry_the_replica_and_122_random_bits() -> None:
    ids = {new_job_id("r1") for _ in range(200)}
    assert len(ids) == 200
    for job_id in ids:
        replica, _, random_part = job_id.partition(".")
        assert replica == "r1" and re.fullmatch(r"[0-9a-f]{32}", random_part)
        assert job_replica(job_id) == "r1"
        assert quote(job_id, safe="") == job_id, "ids go into URL paths as they are"
    longest = new_job_id("a" * 32)
    assert len(longest) == 65 and job_replica(longest) == "a" * 32
    for not_an_id in ("", "nope", "r1", "r1." + "a" * 31, "R1." + "a" * 32, "r.1." + "a" * 32, "-r." + "a" * 32,
                      "r1." + "g" * 32, "a" * 33 + "." + "a" * 32):  # fmt: skip
        assert job_replica(not_an_id) is None, not_an_id


def test_replica_id_setting_is_validated_and_defaults_to_the_host_name() -> None:
    assert Settings(replica_id="r-1").replica == "r-1"
    assert Settings().replica == hostname_replica_id()
    assert hostname_replica_id("Web-07.example.com") == "web-07"
    assert hostname_replica_id("4f2a9c1b7d3e") == "4f2a9c1b7d3e"  # a container's host name: its short id
    assert hostname_replica_id("under_score") == "under-score"
    assert hostname_replica_id("-" * 5) == "local" and len(hostname_replica_id("x" * 80)) == 32
    for bad in ("", "A", "a.b", "-a", "a" * 33, "a b", "ä"):
        with pytest.raises(SettingsError, match="STYA2K_REPLICA_ID"):
            Settings(replica_id=bad)
    assert Settings.from_env({"STYA2K_REPLICA_ID": " "}).replica_id is None  # empty = unset: from the host name
    with pytest.raises(SettingsError, match="a-z, 0-9"):
        Settings.from_env({"STYA2K_REPLICA_ID": "Replica.1"})


@pytest.mark.parametrize(
    ("fields", "files", "status_code", "fragment"),
    [
        ({}, "garbage", 415, "content"),
        ({}, "truncated", 400, "content"),
        ({"max_side": "2048"}, "ok", 422, "allowed 64..1024"),
        ({"mode": None}, "ok", 422, "mode"),
        ({"mode": "sketch"}, "ok", 422, "mode"),
        ({"weights": "1"}, "ok", 422, "weights: not a field of mode stylize"),
        ({"mode": "interpolate", "weights": "1,1"}, "ok", 422, "2..4"),
        ({"mode": "multistyle"}, "two", 422, "mask"),
        ({}, "two", 422, "exactly one"),
        ({"alpha": "2"}, "ok", 422, "alpha"),
    ],
)
def test_bad_input_is_refused_at_submission_and_nothing_is_queued(
    jobs_server: RunningServer, style: bytes, fields: dict[str, Any], files: str, status_code: int, fragment: str
) -> None:
    content = {"garbage": b"not an image at all", "truncated": noise_png((64, 48), seed=7)[:120]}.get(
        files, noise_png((64, 48), seed=7)
    )
    styles = [style, noise_png((64, 64), seed=8)] if files == "two" else [style]
    accepted_before = jobs_server.metric("stya2k_http_requests_total", 'endpoint="/v1/jobs",status="202"')
    form = {"mode": "stylize", **fields}
    data = {k: v for k, v in form.items() if v is not None}
    upload = [("content", ("c.png", content))] + [("style", (f"s{i}.png", s)) for i, s in enumerate(styles)]
    response = httpx.post(jobs_server.url + "/v1/jobs", files=upload, data=data, timeout=60)
    assert response.status_code == status_code, response.text
    assert fragment in response.json()["error"]["message"]
    assert jobs_server.metric("stya2k_http_requests_total", 'endpoint="/v1/jobs",status="202"') == accepted_before
    assert jobs_server.metric("stya2k_jobs_queued") == 0


def test_submission_must_be_multipart(jobs_server: RunningServer) -> None:
    response = httpx.post(jobs_server.url + "/v1/jobs", json={"mode": "stylize"}, timeout=30)
    assert response.status_code == 415 and "multipart/form-data" in response.json()["error"]["message"]


def test_info_states_the_job_limits_and_metrics_are_exported(jobs_server: RunningServer, style: bytes) -> None:
    response = submit(jobs_server, noise_png((64, 48), seed=9), [style], max_side=64)
    wait_for(jobs_server, response.headers["location"], finished)
    info = httpx.get(jobs_server.url + "/v1/info", timeout=30).json()
    assert info["limits"]["max_side"] == SYNC_MAX_SIDE and info["limits"]["jobs_max_side"] == JOBS_MAX_SIDE
    assert info["limits"]["jobs_queue_size"] == 1 and info["jobs"]["running"] == 0
    for name in ("job_timeout_s", "job_result_ttl_s", "job_result_bytes"):
        assert info["limits"][name] > 0
    text = httpx.get(jobs_server.url + "/metrics", timeout=30).text
    for name in ("stya2k_jobs_queued", "stya2k_jobs_running", "stya2k_job_result_bytes"):
        assert f"\n{name} " in text
    for outcome in ("done", "failed", "cancelled", "expired"):
        assert f'stya2k_jobs_finished_total{{outcome="{outcome}"}}' in text
    assert jobs_server.metric("stya2k_jobs_finished_total", 'outcome="done"') >= 1
    assert jobs_server.metric("stya2k_job_duration_seconds_count", 'outcome="done"') >= 1
    assert 'endpoint="/v1/jobs/{id}",status="200"' in text  # job paths are labelled by template


# ---------------------------------------------------------------------------------------------- the client, the CLI
def test_client_submit_wait_with_progress_result_and_delete(jobs_server: RunningServer, style: bytes) -> None:
    reports: list[JobStatus] = []
    with Client(jobs_server.url) as client:
        job = client.submit(noise_png((128, 64), seed=10), style, max_side=128)
        with pytest.raises(JobNotDone):
            job.result()
        done = job.wait(timeout=120, on_progress=reports.append, poll_s=0.05)
        assert done.state == "done" and (done.done, done.total) == (4, 4)  # 2 x 1 tiles, two passes
        assert [r.done for r in reports] == sorted(r.done for r in reports) and reports[-1].state == "done"
        image = job.result()
        assert image.size == (128, 64) and image.format == "png"
        blend = client.submit(noise_png((64, 48), 11), [style, noise_png((64, 64), 12)], mode="interpolate",
                              weights=[0.3, 0.7], max_side=64)  # fmt: skip
        blend.wait(timeout=120, poll_s=0.05)
        assert blend.result().size == (64, 48)
        assert job.cancel().state == "expired"  # DELETE of a done job deletes its result
        with pytest.raises(JobExpired):
            job.result()
        with pytest.raises(JobExpired):
            job.wait(timeout=10)


def test_async_client_submit_wait_and_cancel(jobs_server: RunningServer, style: bytes) -> None:
    mask = Image.new("L", (64, 48), 0)
    mask.paste(255, (0, 0, 32, 48))
    masks = [mask, Image.eval(mask, lambda v: 255 - v)]

    async def scenario() -> None:
        async with AsyncClient(jobs_server.url) as client:
            job = await client.submit(noise_png((64, 48), 13), [style, noise_png((64, 64), 14)], mode="multistyle",
                                      masks=masks, feather=4, max_side=64)  # fmt: skip
            assert (await job.wait(timeout=120, poll_s=0.05)).state == "done"
            assert (await job.result()).size == (64, 48)
            slow = await client.submit(noise_png((SLOW_SIDE, SLOW_SIDE), 15), style, max_side=SLOW_SIDE)
            await slow.cancel()
            with pytest.raises(JobCancelled):
                await slow.wait(timeout=60, poll_s=0.05)

    asyncio.run(scenario())


def test_client_retries_then_raises_queue_full(jobs_server: RunningServer, style: bytes) -> None:
    with Client(jobs_server.url, max_retries=0) as client:
        slow = client.submit(noise_png((SLOW_SIDE, SLOW_SIDE), 16), style, max_side=SLOW_SIDE)
        queued = client.submit(noise_png((64, 48), 17), style, max_side=64)
        try:
            with pytest.raises(QueueFull):
                client.submit(noise_png((64, 48), 18), style, max_side=64)
        finally:
            queued.cancel()
            slow.cancel()
            with pytest.raises(JobCancelled):
                slow.wait(timeout=60, poll_s=0.05)


def test_cli_url_beyond_the_sync_max_side_runs_as_a_job_with_progress(
    jobs_server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    content, style_path, out = tmp_path / "c.png", tmp_path / "s.png", tmp_path / "out.png"
    content.write_bytes(noise_png((256, 64), 19))
    style_path.write_bytes(noise_png((64, 64), 20))
    before = jobs_server.metric("stya2k_http_requests_total", 'endpoint="/v1/jobs",status="202"')
    code = cli.main(["stylize", str(content), str(style_path), "-o", str(out), "--url", jobs_server.url,
                     "--max-side", "256"])  # fmt: skip
    assert code == 0
    with Image.open(out) as img:
        assert img.size == (256, 64)
    assert jobs_server.metric("stya2k_http_requests_total", 'endpoint="/v1/jobs",status="202"') == before + 1
    err = capsys.readouterr().err
    assert "8/8" in err and "transfer pass, tile 4/4" in err  # 4 x 1 tiles, two passes


# ---------------------------------------------------------------------------------------------- expiry, limits, drain
@pytest.fixture(scope="module")
def short_server() -> Iterator[RunningServer]:
    """Results live 3 s and 1 KiB (a small JPEG is ~600-800 bytes: one fits, two do not); jobs 6 s."""
    running = start_server(job_result_ttl_s=3, job_result_bytes=1024, job_timeout_s=6, jobs_queue_size=2, **TILES)
    yield running
    running.stop()


def test_results_expire_after_their_ttl_and_the_oldest_is_evicted_beyond_the_byte_bound(
    short_server: RunningServer, style: bytes
) -> None:
    first = submit(short_server, noise_png((64, 48), 21), [style], max_side=64, format="jpeg")
    first_done = wait_for(short_server, first.headers["location"], finished)
    assert first_done["state"] == "done" and first_done["result"]["bytes"] <= 1024
    second = submit(short_server, noise_png((64, 48), 22), [style], max_side=64, format="jpeg")
    second_done = wait_for(short_server, second.headers["location"], finished)
    assert second_done["state"] == "done"
    assert first_done["result"]["bytes"] + second_done["result"]["bytes"] > 1024  # so one had to go
    evicted = httpx.get(short_server.url + first.headers["location"] + "/result", timeout=30)
    assert evicted.status_code == 410 and evicted.json()["error"]["code"] == "job_expired"
    assert "STYA2K_JOB_RESULT_BYTES" in evicted.json()["error"]["message"]
    assert status(short_server, first.headers["location"])["state"] == "expired"
    kept = httpx.get(short_server.url + second.headers["location"] + "/result", timeout=30)
    assert kept.status_code == 200 and kept.headers["content-type"] == "image/jpeg"

    time.sleep(max(0.0, 3.2 - second_done["timings"]["total_s"]))
    late = httpx.get(short_server.url + second.headers["location"] + "/result", timeout=30)
    assert late.status_code == 410 and "STYA2K_JOB_RESULT_TTL_S=3" in late.json()["error"]["message"]
    assert short_server.metric("stya2k_jobs_finished_total", 'outcome="expired"') >= 2
    assert short_server.metric("stya2k_job_result_bytes") == 0


def test_a_job_that_cannot_finish_in_its_time_limit_stops_as_soon_as_its_pace_shows_it(
    server_factory: Any, style: bytes
) -> None:
    # 128 tile steps of a few hundred ms each cannot fit in 20 s: the job's own pace says so after ~10% of them
    running = server_factory(job_timeout_s=20, **TILES)
    slow = submit(running, noise_png((SLOW_SIDE, SLOW_SIDE), 23), [style], max_side=SLOW_SIDE)
    assert slow.status_code == 202, slow.text
    failed = wait_for(running, slow.headers["location"], finished, timeout_s=60)
    assert failed["state"] == "failed" and failed["error"]["code"] == "job_too_long", failed
    assert "STYA2K_JOB_TIMEOUT_S" in failed["error"]["message"] and "tile step" in failed["error"]["message"]
    assert failed["progress"]["done"] < failed["progress"]["total"]
    assert failed["timings"]["running_s"] < 20.0  # before the limit itself ran out
    assert running.metric("stya2k_jobs_finished_total", 'outcome="failed"') >= 1


def test_shutdown_cancels_queued_jobs_and_gives_the_running_one_the_drain_timeout(style: bytes) -> None:
    running = start_server(drain_timeout_s=1, jobs_queue_size=2, **TILES)
    try:
        slow = submit(running, noise_png((SLOW_SIDE, SLOW_SIDE), 24), [style], max_side=SLOW_SIDE)
        wait_for(running, slow.headers["location"], lambda b: b["state"] == "running")
        queued = submit(running, noise_png((64, 48), 25), [style], max_side=64)
        assert queued.json()["state"] == "queued"
    finally:
        started = time.monotonic()
        running.stop()
    jobs = running.state.jobs
    slow_job, queued_job = jobs.get(slow.json()["id"]), jobs.get(queued.json()["id"])
    assert str(queued_job.state) == "cancelled" and queued_job.started_at is None
    assert str(slow_job.state) == "cancelled" and slow_job.done < slow_job.total
    assert slow_job.error is not None and slow_job.error.code == "draining"
    assert time.monotonic() - started < 30  # the drain timeout (1 s), not the job's minutes
