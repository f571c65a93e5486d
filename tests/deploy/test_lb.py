"""The compose topology without Docker: two real replicas (uvicorn, random weights) behind real nginx running
the project's config (deploy/nginx/nginx.conf.template rendered for 127.0.0.1), under real HTTP load.

Proves: requests are spread over the replicas; SIGKILL of a replica mid-load costs the client no failed
request (nginx retries on the other replica); SIGTERM drains with zero failed requests and exit status 0;
a replica whose readiness turns 503 is taken out of rotation (what the Kubernetes endpoints controller
does with the readinessProbe, done here with a render + `nginx -s reload`) and gets no new requests while it
is still up; a graceful reload drops requests written on the keep-alive connections it closes, and the
project's client sends those again. All load loops are bounded in count and time; every process is killed at the end.
"""

from __future__ import annotations

import importlib.util
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

    def requests_to(self, endpoint: str, status: str | None = None) -> int:
        """Requests this replica answered on ``endpoint`` (a metrics label), of one status or all."""
        text = httpx.get(f"http://{self.address}/metrics", timeout=5).text
        wanted = re.escape(status) if status is not None else r"[^\"]+"
        pattern = rf'^stya2k_http_requests_total\{{endpoint="{re.escape(endpoint)}",status="{wanted}"\}} (\S+)$'
        return sum(int(float(m)) for m in re.findall(pattern, text, re.MULTILINE))

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
    backends: list[str]  # as render.py got them: HOST:PORT or ID=HOST:PORT

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.lb_port}"

    def reload_without(self, replica: Replica) -> None:
        """Mark `replica` down and reload nginx gracefully (new workers, old ones finish their requests)."""
        self.config.write_text(
            self.render.render_file(
                backends=self.backends,
                down={replica.address},
                port=self.lb_port,
                state_dir=self.state_dir,
            )
        )
        self.nginx.send_signal(signal.SIGHUP)

    def log_entries(self) -> list[dict[str, object]]:
        lines = self.access_log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


def _start_replica(port: int, log_dir: Path, extra_env: dict[str, str] | None = None) -> Replica:
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
        **(extra_env or {}),
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
def running_cluster(
    tmp_path: Path,
    render: ModuleType,
    replica_env: list[dict[str, str]] | None = None,
    replica_ids: list[str] | None = None,
    proxy_read_timeout_s: int | None = None,
    shared_jobs: bool = False,
) -> Iterator[Cluster]:
    """Two replicas (``replica_env``: extra settings of each) behind nginx; with ``replica_ids`` nginx is
    rendered with ``ID=HOST:PORT`` backends (job paths routed by id), else with plain addresses.
    ``proxy_read_timeout_s`` shortens nginx's wait for a hung replica (35 s) so a test can reach it;
    ``shared_jobs`` renders nginx for replicas sharing a job store (no job routing)."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        replicas = [_start_replica(_free_port(), tmp_path, env) for env in (replica_env or [{}, {}])]
        processes.extend(r.process for r in replicas)
        lb_port = _free_port()
        state_dir = tmp_path / "nginx"
        state_dir.mkdir()
        config = state_dir / "nginx.conf"
        if replica_ids is None:
            backends = [r.address for r in replicas]
        else:
            backends = [f"{name}={r.address}" for name, r in zip(replica_ids, replicas, strict=True)]
        text = render.render_file(backends=backends, port=lb_port, state_dir=state_dir, shared_jobs=shared_jobs)
        if proxy_read_timeout_s is not None:
            assert "proxy_read_timeout 35s;" in text
            text = text.replace("proxy_read_timeout 35s;", f"proxy_read_timeout {proxy_read_timeout_s}s;")
        config.write_text(text)
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
        cluster = Cluster(replicas, nginx, lb_port, config, access_log, render, state_dir, backends)
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
    resent: int = 0  # transfers sent again after a connection closed without an answer (see _post)

    def _post(self, client: httpx.Client) -> httpx.Response:
        """One transfer, sent again once if the connection closes before any answer: the client policy
        (stya2k_client) for a request whose repeat changes nothing. A graceful nginx reload closes its idle
        keep-alive connections, and a request written on one at that instant gets no answer."""
        files = {"content": ("c.png", CONTENT, "image/png"), "style": ("s.png", STYLE, "image/png")}
        try:
            return client.post("/v1/stylize", files=files, data={"max_side": "64"})
        except (httpx.RemoteProtocolError, httpx.ReadError):
            with self._lock:
                self.resent += 1
            return client.post("/v1/stylize", files=files, data={"max_side": "64"})

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
                    response = self._post(client)
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
        # The reload may close each worker's idle keep-alive connection once, never more.
        assert load.resent <= load.workers, f"{load.resent} transfers were sent again"
        sys.stdout.write(
            f"\nSIGTERM drain: {len(load.results)} requests, 0 failed ({load.resent} sent again on a fresh"
            f" connection after the reload closed theirs), spread {counts}\n"
        )


def test_reloads_drop_keep_alive_requests_that_the_client_sends_again(tmp_path: Path, nginx_render: ModuleType) -> None:
    """A graceful reload closes the old workers' idle keep-alive connections; a request written on one at that
    instant gets no answer (HTTP allows it; nginx cannot avoid it). Raw httpx loops beside the project's client,
    both on keep-alive connections, under repeated reloads: the raw loops must see drops (else the test proves
    nothing), the client none (it sends such requests again when a repeat changes nothing)."""
    from stya2k_client import Client, StyA2KError

    raw_drops: list[str] = []
    client_errors: list[str] = []
    answered = [0, 0]  # raw, client
    stop = threading.Event()

    def raw_loop(url: str) -> None:
        with httpx.Client(base_url=url, timeout=10) as http:
            while not stop.is_set():
                try:
                    http.get("/v1/info").raise_for_status()
                    answered[0] += 1
                except httpx.HTTPError as exc:
                    raw_drops.append(type(exc).__name__)

    def client_loop(url: str) -> None:
        with Client(url, timeout_s=10) as client:
            while not stop.is_set():
                try:
                    client.info()
                    answered[1] += 1
                except StyA2KError as exc:
                    client_errors.append(str(exc))

    with running_cluster(tmp_path, nginx_render) as cluster:
        loops = [threading.Thread(target=loop, args=(cluster.url,)) for loop in (raw_loop, client_loop) * 3]
        for thread in loops:
            thread.start()
        try:
            for _ in range(40):
                time.sleep(0.25)
                cluster.nginx.send_signal(signal.SIGHUP)
            time.sleep(0.5)
        finally:
            stop.set()
            for thread in loops:
                thread.join(timeout=15)
    sys.stdout.write(
        f"\n40 reloads: raw httpx {answered[0]} answered, {len(raw_drops)} dropped; client {answered[1]} answered,"
        f" {len(client_errors)} errors\n"
    )
    assert raw_drops, "no reload dropped a raw keep-alive request: the test did not reach the race"
    assert set(raw_drops) <= {"RemoteProtocolError", "ReadError"}, raw_drops
    assert client_errors == [], client_errors[:3]
    assert answered[1] > 100


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
        assert load.resent == 0, "nginx must answer every request itself: no connection of the client may drop"
        assert retried, "the kill must have hit requests nginx had to retry (otherwise the test proves nothing)"
        assert all(str(e["upstream_addr"]).endswith(survivor.address) for e in retried)

        survivor.process.kill()
        survivor.process.wait(timeout=10)
        response = httpx.post(
            f"{cluster.url}/v1/stylize", files={"content": CONTENT, "style": STYLE}, data={"max_side": "64"}, timeout=30
        )
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
        assert response.json()["error"]["code"] == "not_ready", "with no replica left nginx answers in the API's shape"


# ---------------------------------------------------------------------------------------------- jobs
# 64 px tiles: a 128x128 job is 8 steps (4 tiles, two passes), so it is queued / running for several polls.
JOB_ENV = {"STYA2K_TILE_PX": "64", "STYA2K_TILE_MARGIN_PX": "64", "STYA2K_JOBS_QUEUE_SIZE": "4"}
HEX32 = "0123456789abcdef" * 2


def _job_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (128, 128), (180, 90, 20)).save(buffer, "PNG")
    return buffer.getvalue()


def _submit_job(url: str) -> httpx.Response:
    files = {"content": ("c.png", _job_png(), "image/png"), "style": ("s.png", STYLE, "image/png")}
    return httpx.post(f"{url}/v1/jobs", files=files, data={"mode": "stylize", "max_side": "128"}, timeout=30)


def _submit_jobs(url: str, count: int) -> list[str]:
    accepted = [_submit_job(url) for _ in range(count)]
    assert all(r.status_code == 202 for r in accepted), [r.text for r in accepted]
    job_ids = [str(r.json()["id"]) for r in accepted]
    assert all(r.headers["location"] == f"/v1/jobs/{j}" for r, j in zip(accepted, job_ids, strict=True))
    return job_ids


def _poll_until_done(url: str, job_id: str, timeout_s: float = 60) -> int:
    """Poll the job's status through the balancer until it is done; every poll must find the job. Returns polls."""
    polls, deadline = 0, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10)
        polls += 1
        assert response.status_code == 200, f"poll {polls} of {job_id}: {response.status_code} {response.text}"
        body = response.json()
        assert body["id"] == job_id and body["links"]["self"] == f"/v1/jobs/{job_id}"
        if body["state"] == "done":
            return polls
        assert body["state"] in ("queued", "running"), body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not done within {timeout_s} s")


def _fetch_results(url: str, job_ids: list[str], times: int) -> None:
    for job_id in job_ids:
        for _ in range(times):
            result = httpx.get(f"{url}/v1/jobs/{job_id}/result", timeout=10)
            assert result.status_code == 200 and result.headers["x-job-id"] == job_id, result.text
            assert result.headers["x-output-size"] == "128x128" and result.content.startswith(b"\x89PNG")


def _delete_done_job(url: str, job_id: str) -> None:
    """DELETE of a done job deletes its result (only its holder can do that): then the result is 410."""
    deleted = httpx.delete(f"{url}/v1/jobs/{job_id}", timeout=10)
    assert deleted.status_code == 200 and deleted.json()["state"] == "expired", deleted.text
    _json_error(httpx.get(f"{url}/v1/jobs/{job_id}/result", timeout=10), 410, "job_expired")


def _json_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    error = response.json()["error"]
    assert error["code"] == code, error
    return str(error["message"])


def _job_entries(cluster: Cluster, since: int) -> list[dict[str, object]]:
    return [e for e in cluster.log_entries()[since:] if str(e["uri"]).startswith("/v1/jobs/")]


def _render_and_reload(cluster: Cluster, backends: list[str]) -> None:
    """New config, graceful reload; returns once the new workers answer (a forged id gets nginx's own 404)."""
    cluster.backends = backends
    cluster.config.write_text(
        cluster.render.render_file(backends=backends, port=cluster.lb_port, state_dir=cluster.state_dir)
    )
    cluster.nginx.send_signal(signal.SIGHUP)

    def reloaded() -> bool:
        response = httpx.get(f"{cluster.url}/v1/jobs/zz.{HEX32}", timeout=10)
        return "behind this load balancer" in response.json()["error"]["message"]

    _wait_until(reloaded, 20, "nginx to reload with the job routes")


def test_jobs_reach_the_replica_that_holds_them(tmp_path: Path, nginx_render: ModuleType) -> None:
    """Two phases on one pair of replicas (r1, r2). First nginx without the replicas' ids (the compose case:
    scaled replicas are named by their host names, unknown to nginx): a job path goes to the shared upstream and
    on to the next replica while the answer is 404. Then rendered with ``ID=HOST:PORT``: each job path goes
    straight to its replica, and an id naming no replica gets nginx's own JSON 404."""
    ids = ["r1", "r2"]
    env = [{**JOB_ENV, "STYA2K_REPLICA_ID": name} for name in ids]
    with running_cluster(tmp_path, nginx_render, replica_env=env) as cluster:
        holder = {name: replica for name, replica in zip(ids, cluster.replicas, strict=True)}
        for name, replica in holder.items():
            assert httpx.get(f"http://{replica.address}/v1/info", timeout=10).json()["replica_id"] == name

        # Without ids: every request finds its job, some after a 404 from the other replica.
        job_ids = _submit_jobs(cluster.url, 2)
        for job_id in job_ids:
            _poll_until_done(cluster.url, job_id)
        _fetch_results(cluster.url, job_ids, 3)
        _delete_done_job(cluster.url, job_ids[1])
        entries = _job_entries(cluster, 0)
        assert all(e["status"] in (200, 410) for e in entries), [e for e in entries if e["status"] not in (200, 410)]
        asked_twice = [e for e in entries if "," in str(e["upstream_addr"])]
        assert asked_twice, "least_conn alternates: some requests must have met the other replica first"
        assert all(str(e["upstream_status"]).startswith("404, ") for e in asked_twice), asked_twice
        # A forged id: every replica says 404, the client gets the last one's JSON (naming the "holder").
        response = httpx.get(f"{cluster.url}/v1/jobs/zz.{HEX32}", timeout=10)
        assert "held by replica 'zz'" in _json_error(response, 404, "job_not_found")
        assert "," in str(cluster.log_entries()[-1]["upstream_addr"]), "both replicas must have been asked"

        # With ids. POST goes to any replica (least_conn): four submissions reach both.
        _render_and_reload(cluster, [f"{name}={replica.address}" for name, replica in holder.items()])
        since = len(cluster.log_entries())
        job_ids = _submit_jobs(cluster.url, 4)
        assert {j.split(".")[0] for j in job_ids} == set(ids), f"submissions were not spread: {job_ids}"
        polls = sum(_poll_until_done(cluster.url, job_id) for job_id in job_ids)
        _fetch_results(cluster.url, job_ids, 3)
        _delete_done_job(cluster.url, job_ids[0])
        # Every job request went to its holder alone, first time (no retry, no other replica).
        entries = _job_entries(cluster, since)
        assert len(entries) == polls + 3 * len(job_ids) + 2
        for entry in entries:
            job_id = str(entry["uri"]).split("/")[3]
            assert entry["upstream_addr"] == holder[job_id.split(".")[0]].address, entry
        sys.stdout.write(f"\njobs: {len(job_ids)} jobs, {len(entries)} job requests, each to its replica\n")

        # Ids naming no replica here, or no id at all: nginx's own JSON 404, no replica asked.
        since = len(cluster.log_entries())
        for method, path in (
            ("GET", f"/v1/jobs/r3.{HEX32}"),
            ("GET", f"/v1/jobs/r3.{HEX32}/result"),
            ("DELETE", f"/v1/jobs/r3.{HEX32}"),
            ("GET", "/v1/jobs/not-a-job-id"),
            ("GET", f"/v1/jobs/R1.{HEX32}"),
        ):
            response = httpx.request(method, cluster.url + path, headers={"X-Request-ID": "forged-1"}, timeout=10)
            message = _json_error(response, 404, "job_not_found")
            assert "behind this load balancer" in message and response.headers["x-request-id"] == "forged-1"
            if "r3" in path:
                assert 'no replica "r3"' in message
        forged = cluster.log_entries()[since:]
        assert len(forged) == 5 and all(e["upstream_addr"] in ("", "-") for e in forged), forged
        # An id of a replica here but no such job: that replica answers itself.
        message = _json_error(httpx.get(f"{cluster.url}/v1/jobs/r2.{HEX32}", timeout=10), 404, "job_not_found")
        assert "replica 'r2'" in message

        # The holder gone: its jobs are lost, said in JSON (nginx does not hand the poll to another replica).
        r2 = holder["r2"]
        r2.process.kill()
        r2.process.wait(timeout=10)
        lost = next(j for j in job_ids if j.startswith("r2."))
        message = _json_error(httpx.get(f"{cluster.url}/v1/jobs/{lost}", timeout=10), 503, "not_ready")
        assert '"r2"' in message and "submit it again" in message
        assert _submit_job(cluster.url).status_code == 202, "a new job still goes to the replica that is up"


# ---------------------------------------------------------------------------------------------- issue 28 (edge)
def _log_entry(cluster: Cluster, since: int, uri: str) -> dict[str, object]:
    """The one access-log entry for ``uri`` after entry ``since`` (nginx writes it just after answering)."""
    found: list[dict[str, object]] = []

    def logged() -> bool:
        found[:] = [e for e in cluster.log_entries()[since:] if e["uri"] == uri]
        return len(found) == 1

    _wait_until(logged, 10, f"the access-log entry of {uri}")
    return found[0]


def test_a_job_submission_is_never_sent_to_a_second_replica(tmp_path: Path, nginx_render: ModuleType) -> None:
    """Issue 28: nginx retried POST /v1/jobs on a timeout (`non_idempotent`), so a replica slow to answer a
    submission and the next one both got it: two jobs, one that nobody could see or cancel. A replica that hangs
    (SIGSTOP: the kernel still accepts its connections and the submission) must leave the client a 504 saying
    the outcome is unknown, and the other replica must never see that submission. nginx's wait (35 s) is cut
    to 2 s here, the only change to the rendered config."""
    ids = ["r1", "r2"]
    env = [{**JOB_ENV, "STYA2K_REPLICA_ID": name} for name in ids]
    with running_cluster(tmp_path, nginx_render, env, ids, proxy_read_timeout_s=2) as cluster:
        hung, other = cluster.replicas
        accepted_by_other = 0
        hung.process.send_signal(signal.SIGSTOP)
        try:
            for _ in range(4):  # least_conn takes turns between idle replicas: within a few, one is sent to `hung`
                since = len(cluster.log_entries())
                response = _submit_job(cluster.url)
                entry = _log_entry(cluster, since, "/v1/jobs")
                if hung.address in str(entry["upstream_addr"]):
                    break
                assert response.status_code == 202, response.text
                accepted_by_other += 1
            else:
                raise AssertionError("nginx never sent a submission to the hung replica in 4 tries")
            assert other.requests_to("/v1/jobs") == accepted_by_other, "the other replica got the submission too"
        finally:
            hung.process.send_signal(signal.SIGCONT)
        assert entry["upstream_addr"] == hung.address, f"the submission was sent to a second replica: {entry}"
        assert "unknown" in _json_error(response, 504, "deadline_exceeded")
        # Resumed, the hung replica reads the submission nginx gave up on: one replica got it, once.
        _wait_until(lambda: hung.requests_to("/v1/jobs") == 1, 30, "the resumed replica to read the submission")
        assert other.requests_to("/v1/jobs") == accepted_by_other
        created = hung.requests_to("/v1/jobs", "202") + other.requests_to("/v1/jobs", "202")
        assert created - accepted_by_other <= 1, "the one submission created more than one job"
        sys.stdout.write(
            f"\njob submission to a hung replica: 504 after {entry['request_s']} s, sent to {entry['upstream_addr']}"
            f" only; jobs it created: {created - accepted_by_other} (the resumed replica's answer: "
            f"{hung.requests_to('/v1/jobs', '202')} x 202)\n"
        )
        # The synchronous transfers still retry a POST (recomputing is safe): covered by the SIGKILL test above.


def _raw_exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """One raw request; nginx closes after its own errors. Status, headers (lower-case names), body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((n.strip().lower(), v.strip()) for n, _, v in (line.partition(":") for line in lines[1:]))
    return int(lines[0].split()[1]), headers, body


NGINX_OWN_ERRORS = [
    (b"GARBAGE\r\n\r\n", 400, "bad_request"),  # before any request line: no named location can take it
    (b"GET /v1/info HTTP/1.1\r\n\r\n", 400, "bad_request"),  # no Host
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    (b"GET /v1/info HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n", 431, "header_too_large"),
    (b"TRACE /v1/info HTTP/1.1\r\nHost: x\r\n\r\n", 405, "method_not_allowed"),
    (b"POST /v1/stylize HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "not_implemented"),
    (b"GET /_stya2k/error/400 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404, "not_found"),
]


def test_nginx_errors_are_json_and_request_ids_agree_with_the_replicas(
    tmp_path: Path, nginx_render: ModuleType
) -> None:
    """Issue 28: nginx's own 400 / 414 pages were HTML, and nginx logged (and passed on) any X-Request-ID while
    the replica replaced one it would not keep, so the two logs named one request differently."""
    with running_cluster(tmp_path, nginx_render) as cluster:
        for raw, status, code in NGINX_OWN_ERRORS:
            got, headers, body = _raw_exchange(cluster.lb_port, raw)
            assert (got, headers.get("content-type")) == (status, "application/json"), (raw[:40], got, body[:200])
            assert json.loads(body)["error"]["code"] == code, body
            assert re.fullmatch(r"[0-9a-f]{32}", headers.get("x-request-id", "")), headers
        # Within nginx's per-line limit but over the replica's 16 KiB in all: the replica's JSON 431 comes through.
        padded = {f"X-Pad-{i}": "a" * 6000 for i in range(3)}
        _json_error(httpx.get(f"{cluster.url}/v1/info", headers=padded, timeout=10), 431, "header_too_large")

        for supplied, kept in (("client-7.a_b:c", True), ("x" * 128, True), ("has space", False),
                               ("x" * 129, False), ("a/b", False), ('"}{"inject', False)):  # fmt: skip
            since = len(cluster.log_entries())
            response = httpx.get(f"{cluster.url}/v1/info", headers={"X-Request-ID": supplied}, timeout=10)
            assert response.status_code == 200, response.text
            replica_id = response.headers["x-request-id"]  # the id the replica used (it echoes what it got)
            logged = _log_entry(cluster, since, "/v1/info")["request_id"]
            assert logged == replica_id, f"nginx logged {logged!r}, the replica used {replica_id!r}"
            assert (replica_id == supplied) is kept, (supplied, replica_id)
            if not kept:
                assert re.fullmatch(r"[0-9a-f]{32}", replica_id), "nginx's own $request_id replaces it"


# ---------------------------------------------------------------------------------------------- shared job store
@pytest.fixture
def redis_store(tmp_path: Path) -> Iterator[str]:
    """A real redis-server (tests/service/redis_server.py) on loopback; yields its URL."""
    if importlib.util.find_spec("redis") is None:
        pytest.skip("no redis-py: pip install .[redis]")
    sys.path.insert(0, str(REPO_ROOT / "tests" / "service"))
    from redis_server import MISSING, REDIS_SERVER, RedisServer

    if REDIS_SERVER is None:
        pytest.skip(MISSING)
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisServer(folder)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def test_shared_job_store_jobs_are_balanced_with_no_job_routing(
    tmp_path: Path, nginx_render: ModuleType, redis_store: str
) -> None:
    """Replicas sharing a Redis job store behind nginx rendered with ``--shared-jobs``: no job map, routes or
    404 walk in the config; every job request, submissions included, is answered by the first replica nginx
    asks, both replicas answer job paths, and an unknown id's 404 comes from one replica, final."""
    env = [{**JOB_ENV, "STYA2K_REPLICA_ID": name, "STYA2K_JOBS_STORE": redis_store} for name in ("r1", "r2")]
    with running_cluster(tmp_path, nginx_render, replica_env=env, shared_jobs=True) as cluster:
        text = cluster.config.read_text()
        for routing in ("stya2k_job_upstream", "stya2k_job_replica", "@job_unknown_replica", "http_404"):
            assert routing not in text, f"{routing} is job routing, which a shared store does not need"

        job_ids = _submit_jobs(cluster.url, 4)
        polls = sum(_poll_until_done(cluster.url, job_id) for job_id in job_ids)
        _fetch_results(cluster.url, job_ids, 3)
        _delete_done_job(cluster.url, job_ids[0])
        entries = [e for e in cluster.log_entries() if str(e["uri"]).startswith("/v1/jobs")]
        assert len(entries) == len(job_ids) + polls + 3 * len(job_ids) + 2
        assert all("," not in str(e["upstream_addr"]) for e in entries), "a shared store answers on the first ask"
        answering = {str(e["upstream_addr"]) for e in entries if str(e["uri"]).startswith("/v1/jobs/")}
        assert answering == {r.address for r in cluster.replicas}, f"job paths were not balanced: {answering}"

        unknown = httpx.get(f"{cluster.url}/v1/jobs/{HEX32}", timeout=10)
        _json_error(unknown, 404, "job_not_found")
        assert "," not in str(cluster.log_entries()[-1]["upstream_addr"]), "a 404 from a shared store is final"
        sys.stdout.write(f"\nshared jobs: {len(job_ids)} jobs, {len(entries)} job requests, balanced, no routing\n")
