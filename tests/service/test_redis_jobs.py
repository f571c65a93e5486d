"""Jobs on a shared Redis store (service/redis_jobs.py): a real redis-server, real replicas (in-process uvicorn
servers, and one `python -m service` subprocess that is killed with SIGKILL), real HTTP.

With STYA2K_TILE_PX=64 / STYA2K_TILE_MARGIN_PX=64 a 256 px job is 4 x 4 tiles (32 steps), long enough to be caught
running on 2 CPU cores, short enough to be run twice in a test.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis_server import MISSING, REDIS_SERVER, RedisServer
from service_helpers import RunningServer, free_port, start_server
from test_jobs import finished, noise_png, pixels, status, submit, wait_for

from service.contract import Mode, OutputFormat, StyleFit, TransferRequest, VideoRequest
from service.settings import Settings, SettingsError

pytestmark = [
    pytest.mark.skipif(REDIS_SERVER is None, reason=MISSING),
    pytest.mark.skipif(importlib.util.find_spec("redis") is None, reason="no redis-py: pip install .[redis]"),
]

TILES = {"tile_px": 64, "tile_margin_px": 64}
SLOW_SIDE = 256
CLAIM_IDLE_S = 2.0  # a dead replica's job is taken over after this (the default is 30 s)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def replica(redis: RedisServer, name: str, **overrides: Any) -> RunningServer:
    return start_server(jobs_store=redis.url, jobs_key_prefix="t:", replica_id=name, jobs_max_side=512,
                        jobs_store_claim_idle_s=CLAIM_IDLE_S, **TILES, **overrides)  # fmt: skip


@pytest.fixture(scope="module")
def style() -> bytes:
    return noise_png((64, 64), seed=1)


def error_of(response: httpx.Response) -> tuple[int, str, str]:
    error = response.json()["error"]
    return response.status_code, error["code"], error["message"]


# ---------------------------------------------------------------------------------------------- without Redis
def test_requests_travel_through_the_store_unchanged() -> None:
    from service.redis_jobs import pack_request, unpack_request

    image = TransferRequest(mode=Mode.multistyle, content=b"\x00c", styles=[b"s1", b"s2\xff"], masks=[b"m1", b""],
                            format=OutputFormat.webp, style_fit=StyleFit.whole, max_side=300, feather=2.5)  # fmt: skip
    video = VideoRequest(mode=Mode.interpolate, video=b"v" * 10, styles=[b"a", b"b"], weights=[0.25, 0.75],
                         smoothing=0.5)  # fmt: skip
    assert unpack_request(pack_request(image)) == image
    assert unpack_request(pack_request(video)) == video


def test_the_store_setting_is_validated() -> None:
    assert Settings.from_env({"STYA2K_JOBS_STORE": "redis://10.0.0.5:6379/2"}).jobs_store == "redis://10.0.0.5:6379/2"
    with pytest.raises(SettingsError, match="STYA2K_JOBS_STORE"):
        Settings.from_env({"STYA2K_JOBS_STORE": "postgres://x"})
    with pytest.raises(SettingsError, match="STYA2K_JOBS_KEY_PREFIX"):
        Settings.from_env({"STYA2K_JOBS_KEY_PREFIX": "a b"})


# ---------------------------------------------------------------------------------------------- two replicas
def test_a_job_submitted_on_one_replica_is_polled_fetched_and_deleted_on_the_other(
    redis: RedisServer, style: bytes
) -> None:
    one, two = replica(redis, "one"), replica(redis, "two")
    try:
        response = submit(one, noise_png((64, 48), 3), [style], max_side=64)
        assert response.status_code == 202, response.text
        job_id, location = response.json()["id"], response.headers["location"]
        assert re.fullmatch(r"[0-9a-f]{32}", job_id)  # 128 random bits, no replica part
        body = wait_for(two, location, finished)
        assert body["state"] == "done" and body["attempt"] == 1, body
        assert body["result"]["width"] == 64 and body["result"]["height"] == 48
        fetched = [httpx.get(server.url + location + "/result", timeout=30) for server in (one, two)]
        assert all(r.status_code == 200 and r.headers["content-type"] == "image/png" for r in fetched)
        assert fetched[0].content == fetched[1].content and pixels(fetched[0].content).shape == (48, 64, 3)
        deleted = httpx.delete(two.url + location, timeout=30)
        assert deleted.status_code == 200 and deleted.json()["state"] == "expired", deleted.text
        assert error_of(httpx.get(one.url + location + "/result", timeout=30))[:2] == (410, "job_expired")
        # ids of the memory store's form, and unknown ones, are 404 on every replica (documented in docs/API.md)
        for missing in ("one." + "0" * 32, "f" * 32):
            code, name, message = error_of(httpx.get(two.url + f"/v1/jobs/{missing}", timeout=30))
            assert (code, name) == (404, "job_not_found") and "store" in message
        info = httpx.get(one.url + "/v1/info", timeout=30).json()["jobs"]
        assert info["store"] == "redis" and info["reachable"] is True
    finally:
        one.stop()
        two.stop()


def test_progress_is_visible_from_both_replicas_and_delete_on_either_stops_the_job(
    redis: RedisServer, style: bytes
) -> None:
    one, two = replica(redis, "one"), replica(redis, "two")
    try:
        response = submit(one, noise_png((SLOW_SIDE, SLOW_SIDE), 4), [style], max_side=SLOW_SIDE)
        location = response.headers["location"]
        seen = wait_for(one, location, lambda b: b["state"] == "running" and b["progress"]["done"] >= 2)
        assert seen["progress"]["total"] > 2
        other = status(two, location)
        assert other["state"] == "running" and other["progress"]["done"] >= 2
        # DELETE on the replica that does not run it: the runner reads the flag at its next heartbeat.
        runner = one if one.state.jobs._running is not None else two  # type: ignore[attr-defined]
        bystander = two if runner is one else one
        deleted = httpx.delete(bystander.url + location, timeout=30)
        assert deleted.status_code == 202 and deleted.json()["cancel_requested"] is True, deleted.text
        body = wait_for(runner, location, finished, timeout_s=30)
        assert body["state"] == "cancelled" and body["progress"]["done"] < body["progress"]["total"], body
    finally:
        one.stop()
        two.stop()


def _subprocess_replica(redis: RedisServer, name: str, port: int) -> subprocess.Popen[bytes]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("STYA2K_")}, "PYTHONPATH": str(ROOT)}
    settings = {"weights": "random", "max_side": 64, "default_side": 64, "style_size": 64, "warmup": "false",
                "threads": 1, "log_level": "warning", "port": port, "replica_id": name, "jobs_store": redis.url,
                "jobs_key_prefix": "t:", "jobs_max_side": 512, "jobs_store_claim_idle_s": CLAIM_IDLE_S,
                **TILES}  # fmt: skip
    env.update({f"STYA2K_{k.upper()}": str(v) for k, v in settings.items()})
    process = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        assert process.poll() is None, "the subprocess replica exited"
        time.sleep(0.2)
    process.kill()
    raise AssertionError("the subprocess replica did not become ready")


def test_a_job_whose_replica_is_killed_completes_on_another(redis: RedisServer, style: bytes) -> None:
    port = free_port()
    doomed = _subprocess_replica(redis, "doomed", port)
    url = f"http://127.0.0.1:{port}"
    survivor: RunningServer | None = None
    try:
        files = [("content", ("c.png", noise_png((SLOW_SIDE, SLOW_SIDE), 5))), ("style", ("s.png", style))]
        response = httpx.post(url + "/v1/jobs", files=files, data={"mode": "stylize", "max_side": SLOW_SIDE},
                              timeout=60)  # fmt: skip
        assert response.status_code == 202, response.text
        location = response.headers["location"]
        deadline = time.monotonic() + 60
        while httpx.get(url + location, timeout=10).json()["state"] != "running":
            assert time.monotonic() < deadline, "the job never started on the doomed replica"
            time.sleep(0.05)
        # A second job waits behind it: the shared queue's depth and age are on /metrics (the sweeper's 1 s tick).
        queued = httpx.post(url + "/v1/jobs", files=[("content", ("q.png", noise_png((64, 48), 6))),
                                                     ("style", ("s.png", style))],
                            data={"mode": "stylize", "max_side": 64}, timeout=60)  # fmt: skip
        assert queued.status_code == 202 and queued.json()["state"] == "queued", queued.text
        deadline = time.monotonic() + 10  # the sweeper's tick, then the job's age past 0.5 s: polled, not slept
        while True:
            metrics = httpx.get(url + "/metrics", timeout=10).text
            found = re.search(r"^stya2k_jobs_oldest_queued_age_seconds (\S+)$", metrics, re.M)
            if re.search(r"^stya2k_jobs_queued 1\.0$", metrics, re.M) and found and float(found.group(1)) > 0.5:
                break
            assert time.monotonic() < deadline, metrics
            time.sleep(0.1)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=30)
        killed_at = time.monotonic()
        survivor = replica(redis, "survivor")
        body = wait_for(survivor, location, finished, timeout_s=180)
        assert body["state"] == "done" and body["attempt"] == 2, body
        assert body["progress"]["done"] == body["progress"]["total"]
        result = httpx.get(survivor.url + location + "/result", timeout=30)
        assert result.status_code == 200 and pixels(result.content).shape == (SLOW_SIDE, SLOW_SIDE, 3)
        assert wait_for(survivor, queued.headers["location"], finished)["state"] == "done"
        # Not a speed target (docs/DEPLOY.md has the measurement): the takeover waited for the claim time.
        assert time.monotonic() - killed_at >= CLAIM_IDLE_S
    finally:
        if doomed.poll() is None:
            doomed.kill()
            doomed.wait(timeout=30)
        if survivor is not None:
            survivor.stop()


def test_a_redis_restart_mid_run_gives_503_then_the_job_completes(redis: RedisServer, style: bytes) -> None:
    one = replica(redis, "one")
    try:
        response = submit(one, noise_png((SLOW_SIDE, SLOW_SIDE), 7), [style], max_side=SLOW_SIDE)
        location = response.headers["location"]
        wait_for(one, location, lambda b: b["state"] == "running")
        redis.stop()
        code, name, message = error_of(httpx.get(one.url + location, timeout=30))
        assert (code, name) == (503, "job_store_unavailable") and "Redis at 127.0.0.1" in message, message
        refused = submit(one, noise_png((64, 48), 8), [style], max_side=64)
        assert error_of(refused)[:2] == (503, "job_store_unavailable")
        assert httpx.get(one.url + "/health/live", timeout=10).status_code == 200  # the process is fine
        info = httpx.get(one.url + "/v1/info", timeout=30).json()["jobs"]
        assert info["reachable"] is False
        time.sleep(1.0)
        redis.start()  # same port and directory: the append-only file brings the jobs back
        deadline = time.monotonic() + 180
        while True:  # the first request on a connection that died with Redis may still be 503
            answer = httpx.get(one.url + location, timeout=30)
            if answer.status_code == 200 and finished(answer.json()):
                break
            assert answer.status_code in (200, 503) and time.monotonic() < deadline, answer.text
            time.sleep(0.2)
        assert answer.json()["state"] == "done", answer.json()
        after = submit(one, noise_png((64, 48), 9), [style], max_side=64)
        assert after.status_code == 202, after.text
        assert wait_for(one, after.headers["location"], finished)["state"] == "done"
    finally:
        one.stop()


def test_inputs_beyond_the_store_limit_are_refused_with_413(redis: RedisServer, style: bytes) -> None:
    one = replica(redis, "one", jobs_store_max_input_bytes=16384)
    try:
        response = submit(one, noise_png((128, 128), 10), [style], max_side=64)
        code, name, message = error_of(response)
        assert (code, name) == (413, "job_too_large") and "STYA2K_JOBS_STORE_MAX_INPUT_BYTES" in message
        bad = submit(one, b"not an image", [style], max_side=64)  # bad input: refused at submission, not queued
        assert error_of(bad)[:2] == (415, "unsupported_media_type")
        assert httpx.get(one.url + "/v1/info", timeout=30).json()["jobs"]["queued"] == 0
    finally:
        one.stop()


def test_a_full_redis_refuses_submissions_with_503_and_takes_them_again_when_it_has_room(
    redis: RedisServer, style: bytes
) -> None:
    """deploy/k8s/shared-jobs runs Redis with maxmemory and noeviction (a job must never be evicted): over the
    limit Redis refuses writes, and a submission must get a clear 503 (not a 500), with the replica serving on."""
    import redis as redis_py

    admin = redis_py.Redis.from_url(redis.url)
    one = replica(redis, "one")
    try:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", str(int(admin.info("memory")["used_memory"]) + 64 * 1024))
        response = submit(one, noise_png((256, 256), 11), [style], max_side=64)  # ~190 KB of raw inputs
        code, name, message = error_of(response)
        assert (code, name) == (503, "job_store_unavailable") and "is full" in message and "OOM" in message, message
        assert response.headers.get("retry-after")
        assert httpx.get(one.url + "/health/live", timeout=10).status_code == 200
        admin.config_set("maxmemory", "0")
        again = submit(one, noise_png((256, 256), 11), [style], max_side=64)
        assert again.status_code == 202, again.text
        assert wait_for(one, again.headers["location"], finished)["state"] == "done"
    finally:
        admin.close()
        one.stop()


def test_consumers_of_replicas_that_are_gone_are_forgotten_but_never_with_an_entry(
    redis: RedisServer, style: bytes
) -> None:
    """Every process is a consumer of the group, so restarts leave consumers behind: the sweeper removes those
    idle for DEAD_CONSUMER_CLAIMS claim times, and keeps the live replica's. The removal script refuses a
    consumer that holds an entry (XGROUP DELCONSUMER would drop the entry from every pending list, and its job
    would never run again)."""
    import redis as redis_py

    from service.redis_jobs import DEAD_CONSUMER_CLAIMS, FORGET_CONSUMER, GROUP

    admin = redis_py.Redis.from_url(redis.url, decode_responses=True)
    # The script alone, on a group no replica reads.
    admin.xgroup_create("x:queue", GROUP, id="0", mkstream=True)
    admin.xadd("x:queue", {"job": "a"})
    admin.xreadgroup(GROUP, "holder", {"x:queue": ">"}, count=1)
    admin.xgroup_createconsumer("x:queue", GROUP, "empty")
    assert admin.eval(FORGET_CONSUMER, 1, "x:queue", GROUP, "holder") == 0
    assert admin.eval(FORGET_CONSUMER, 1, "x:queue", GROUP, "empty") == 1
    assert {c["name"] for c in admin.xinfo_consumers("x:queue", GROUP)} == {"holder"}
    assert admin.xpending("x:queue", GROUP)["pending"] == 1

    one = replica(redis, "one")
    try:
        location = submit(one, noise_png((64, 48), 3), [style], max_side=64).headers["location"]
        assert wait_for(one, location, finished)["state"] == "done"
        admin.xgroup_createconsumer("t:queue", GROUP, "gone")
        time.sleep(DEAD_CONSUMER_CLAIMS * CLAIM_IDLE_S + CLAIM_IDLE_S + 1.0)  # past the dead time, then a check
        names = {c["name"] for c in admin.xinfo_consumers("t:queue", GROUP)}
        assert "gone" not in names, names
        assert any(name.startswith("one-") for name in names), f"the live replica's consumer went: {names}"
    finally:
        admin.close()
        one.stop()
