"""The compose topology without Docker: two real replicas (uvicorn, random weights) behind real nginx running
the project's config (deploy/nginx/nginx.conf.template rendered for 127.0.0.1), under real HTTP load.

Proves: requests are spread over the replicas; SIGKILL of a replica mid-load costs the client no failed
request (nginx retries on the other replica); SIGTERM drains with zero failed requests and exit status 0;
a replica whose readiness turns 503 is taken out of rotation (what the Kubernetes endpoints controller
does with the readinessProbe, done here with a render + `nginx -s reload`) and gets no new requests while it
is still up. All load loops are bounded in count and time; every process is killed at the end.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
DRAIN_GRACE_S = 4.0
START_TIMEOUT_S = 90.0


def _nginx_binary() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


NGINX = _nginx_binary()
pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (.ci/install-nginx.sh installs Debian's nginx)"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buffer, "PNG")
    return buffer.getvalue()


CONTENT, STYLE = _png((200, 40, 40)), _png((30, 60, 220))


@dataclass
class Replica:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def served(self) -> int:
        """Successful /v1/stylize requests this replica answered, from its own /metrics."""
        text = httpx.get(f"http://{self.address}/metrics", timeout=5).text
        match = re.search(r'stya2k_http_requests_total\{endpoint="/v1/stylize",status="200"\} (\S+)', text)
        return int(float(match.group(1))) if match else 0

    def ready_status(self) -> int:
        return httpx.get(f"http://{self.address}/health/ready", timeout=5).status_code

    def in_flight(self) -> int:
        """Transfer requests this replica is handling now (its stya2k_requests_in_flight gauge)."""
        text = httpx.get(f"http://{self.address}/metrics", timeout=5).text
        match = re.search(r"^stya2k_requests_in_flight (\S+)$", text, re.MULTILINE)
        return int(float(match.group(1))) if match else 0


@dataclass
class Cluster:
    replicas: list[Replica]
    nginx: subprocess.Popen[bytes]
    lb_port: int
    config: Path
    access_log: Path
    render: ModuleType
    state_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.lb_port}"

    def reload_without(self, replica: Replica) -> None:
        """Mark `replica` down and reload nginx gracefully (new workers, old ones finish their requests)."""
        self.config.write_text(
            self.render.render_file(
                backends=[r.address for r in self.replicas],
                down={replica.address},
                port=self.lb_port,
                state_dir=self.state_dir,
            )
        )
        self.nginx.send_signal(signal.SIGHUP)

    def log_entries(self) -> list[dict[str, object]]:
        lines = self.access_log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


def _start_replica(port: int, log_dir: Path) -> Replica:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STYA2K_")},
        "STYA2K_HOST": "127.0.0.1",
        "STYA2K_PORT": str(port),
        "STYA2K_WEIGHTS": "random",
        "STYA2K_WARMUP": "false",
        "STYA2K_THREADS": "1",
        "STYA2K_STYLE_SIZE": "64",
        "STYA2K_DRAIN_GRACE_S": str(DRAIN_GRACE_S),
        "STYA2K_DRAIN_TIMEOUT_S": "15",
        "STYA2K_LOG_LEVEL": "warning",
    }
    log = (log_dir / f"replica-{port}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "service"],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Replica(port, process)


def _wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextmanager
def running_cluster(tmp_path: Path, render: ModuleType) -> Iterator[Cluster]:
    processes: list[subprocess.Popen[bytes]] = []
    try:
        replicas = [_start_replica(_free_port(), tmp_path) for _ in range(2)]
        processes.extend(r.process for r in replicas)
        lb_port = _free_port()
        state_dir = tmp_path / "nginx"
        state_dir.mkdir()
        config = state_dir / "nginx.conf"
        config.write_text(render.render_file(backends=[r.address for r in replicas], port=lb_port, state_dir=state_dir))
        access_log = tmp_path / "access.log"
        assert NGINX is not None
        global_directives = f"daemon off; pid {state_dir / 'nginx.pid'};"
        nginx = subprocess.Popen(
            [NGINX, "-e", "stderr", "-p", str(state_dir), "-c", str(config), "-g", global_directives],
            stdout=access_log.open("wb"),
            stderr=(tmp_path / "nginx-error.log").open("wb"),
            start_new_session=True,
        )
        processes.append(nginx)
        cluster = Cluster(replicas, nginx, lb_port, config, access_log, render, state_dir)
        for replica in replicas:
            _wait_until(lambda r=replica: r.ready_status() == 200, START_TIMEOUT_S, f"replica {replica.port}")
        _wait_until(lambda: httpx.get(f"{cluster.url}/lb/health", timeout=2).status_code == 200, 20, "nginx")
        yield cluster
    finally:
        for process in processes:
            # Each process leads its own session: killing the group also takes nginx's workers.
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        for process in processes:
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)


@dataclass
class Load:
    """`workers` clients posting through the balancer until stopped, `max_requests` or `max_seconds`."""

    url: str
    workers: int = 4
    max_requests: int = 400
    max_seconds: float = 30.0
    results: list[tuple[float, int | str]] = field(default_factory=list)  # (sent at, status or error)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    _sent: int = 0

    def _work(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                with self._lock:
                    if self._sent >= self.max_requests:
                        return
                    self._sent += 1
                sent = time.monotonic()
                try:
                    response = client.post(
                        "/v1/stylize",
                        files={"content": ("c.png", CONTENT, "image/png"), "style": ("s.png", STYLE, "image/png")},
                        data={"max_side": "64"},
                    )
                    outcome: int | str = response.status_code
                    if response.status_code == 200 and not response.content.startswith(b"\x89PNG"):
                        outcome = "200 without a PNG body"
                except httpx.HTTPError as exc:
                    outcome = f"{type(exc).__name__}: {exc}"
                with self._lock:
                    self.results.append((sent, outcome))

    def __enter__(self) -> Load:
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(self.workers)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=40)

    def wait_for(self, count: int, timeout: float) -> None:
        _wait_until(lambda: len(self.results) >= count, timeout, f"{count} responses")

    @property
    def failures(self) -> list[int | str]:
        return [outcome for _, outcome in self.results if outcome != 200]


def _assert_body_limit_answered_by_nginx(cluster: Cluster) -> None:
    """A declared body over STYA2K_MAX_BODY_BYTES is refused by nginx from the headers alone, in the API's shape."""
    limit = cluster.render.DEFAULT_MAX_BODY_BYTES
    head = (
        f"POST /v1/stylize HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: too-big-1\r\n"
        f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {limit + 1}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", cluster.lb_port), timeout=10) as sock:
        sock.sendall(head.encode())
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert status_line.split()[1] == b"413", reply[:300]
    assert b"x-request-id: too-big-1" in headers.lower()
    assert json.loads(body)["error"]["code"] == "body_too_large"


def test_spread_then_sigterm_drain_with_readiness_removal(tmp_path: Path, nginx_render: ModuleType) -> None:
    with running_cluster(tmp_path, nginx_render) as cluster:
        first, second = cluster.replicas
        with Load(cluster.url, max_requests=24) as load:
            load.wait_for(24, 60)
        assert load.failures == []
        counts = [first.served(), second.served()]
        assert sum(counts) == 24 and min(counts) >= 4, f"requests were not spread: {counts}"

        _assert_body_limit_answered_by_nginx(cluster)

        with Load(cluster.url, max_seconds=40) as load:
            load.wait_for(len(load.results) + 8, 30)
            first.process.send_signal(signal.SIGTERM)
            grace_ends = time.monotonic() + DRAIN_GRACE_S
            # The orchestrator's part: readiness 503 -> out of the balancer (k8s: endpoints; here: reload).
            _wait_until(lambda: first.ready_status() == 503, 5, "readiness 503 after SIGTERM")
            cluster.reload_without(first)
            # Old nginx workers finish the requests they had sent to `first` (on a busy machine one can take
            # longer than a fixed pause): wait until `first` has none in flight, leaving time to watch.
            time.sleep(0.3)
            settle_by = grace_ends - 1.3
            while first.in_flight() > 0 and time.monotonic() < settle_by:
                time.sleep(0.05)
            drained_at, other_at = first.served(), second.served()
            watch = grace_ends - 0.7 - time.monotonic()  # `first` still accepts connections until grace_ends
            assert watch > 0.5, "readiness took too long to observe; the grace period is nearly over"
            time.sleep(watch)
            assert first.process.poll() is None, "the replica must keep serving during the grace period"
            assert first.served() == drained_at, "nginx sent new requests to a replica that is not ready"
            assert second.served() > other_at, "the load must have gone on meanwhile"
            assert first.process.wait(timeout=30) == 0, "a drained replica exits 0"
            load.wait_for(len(load.results) + 4, 30)
        assert load.failures == [], f"SIGTERM drain failed requests: {load.failures[:5]}"
        sys.stdout.write(f"\nSIGTERM drain: {len(load.results)} requests, 0 failed, spread {counts}\n")


def test_sigkill_mid_load_is_hidden_by_the_retry(tmp_path: Path, nginx_render: ModuleType) -> None:
    with running_cluster(tmp_path, nginx_render) as cluster:
        victim, survivor = cluster.replicas
        with Load(cluster.url, max_seconds=40) as load:
            load.wait_for(12, 30)
            victim.process.kill()  # SIGKILL: connections in flight are reset, the port refuses
            killed_at = time.monotonic()
            victim.process.wait(timeout=10)
            load.wait_for(len(load.results) + 16, 30)
        after_kill = [outcome for sent, outcome in load.results if sent >= killed_at]
        assert after_kill, "no request was sent after the kill"
        entries = cluster.log_entries()
        retried = [e for e in entries if "," in str(e["upstream_addr"])]
        failed = load.failures
        sys.stdout.write(
            f"\nSIGKILL: {len(load.results)} requests, {len(failed)} failed, {len(retried)} retried by nginx\n"
        )
        assert failed == [], f"the client saw failures despite the retry policy: {failed[:5]}"
        assert retried, "the kill must have hit requests nginx had to retry (otherwise the test proves nothing)"
        assert all(str(e["upstream_addr"]).endswith(survivor.address) for e in retried)

        survivor.process.kill()
        survivor.process.wait(timeout=10)
        response = httpx.post(
            f"{cluster.url}/v1/stylize", files={"content": CONTENT, "style": STYLE}, data={"max_side": "64"}, timeout=30
        )
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
        assert response.json()["error"]["code"] == "not_ready", "with no replica left nginx answers in the API's shape"
