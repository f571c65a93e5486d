"""SIGTERM drain of a real `python -m service` process: no in-flight request is lost, exit status 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from service_helpers import free_port, image_bytes

REPO = Path(__file__).resolve().parents[2]


def test_sigterm_drains_in_flight_requests_and_exits_zero(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "STYA2K_WEIGHTS": "random",
        "STYA2K_PORT": str(port),
        "STYA2K_MAX_SIDE": "64",
        "STYA2K_DEFAULT_SIDE": "64",
        "STYA2K_STYLE_SIZE": "64",
        "STYA2K_WARMUP": "false",
        "STYA2K_THREADS": "1",
        "STYA2K_MAX_BATCH_SIZE": "2",
        "STYA2K_MAX_WAIT_MS": "20",
        "STYA2K_DRAIN_GRACE_S": "1.5",
        "STYA2K_DRAIN_TIMEOUT_S": "30",
        "STYA2K_LOG_LEVEL": "info",
    }
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=log_file,
                                   stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, log_path.read_text()
            time.sleep(0.2)
        else:
            raise AssertionError("server never became ready:\n" + log_path.read_text())

        style = image_bytes((64, 64), "PNG", color=(250, 200, 10))

        def send(index: int) -> int:
            content = image_bytes((64, 48), "PNG", color=(index * 30, 80, 160))
            response = httpx.post(url + "/v1/stylize", files={"content": content, "style": style}, timeout=60)
            return response.status_code

        with ThreadPoolExecutor(max_workers=6) as pool:
            in_flight = [pool.submit(send, i) for i in range(6)]
            time.sleep(0.3)  # requests are queued / computing
            process.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            # During the grace period: readiness says draining, yet new work is still served.
            ready = httpx.get(url + "/health/ready", timeout=5)
            assert ready.status_code == 503 and ready.json()["error"]["code"] == "draining"
            late = pool.submit(send, 99)
            statuses = [f.result(timeout=60) for f in in_flight]
            assert statuses == [200] * 6, statuses
            assert late.result(timeout=60) == 200
        assert process.wait(timeout=40) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log_text = log_path.read_text()
    assert '"draining' in log_text and "Traceback" not in log_text
