"""Reliability benchmark: attacks against `python -m service` on 127.0.0.1 while a probe times /health/live.

    python -m bench.reliability                        # every attack at full size, results to bench/results
    python -m bench.reliability --attacks json_keys,idle --out /tmp/r.json
    python -m bench.reliability --repo /tmp/old-tree   # the same attacks against another checkout (before/after)

Each attack runs against a fresh server process (random weights, no warm-up: the attacks never reach the
model). While it runs, a probe opens a new connection every 50 ms and sends ``GET /health/live``, as a kubelet
does; its latencies (and failures: no answer within 5 s) are the measure of whether the attack stalls the
server. The server's RSS is sampled every 50 ms (before, peak, and 5 s after the attack). The attack
functions are also what tests/service/test_reliability.py runs, at small sizes.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import io
import json
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
PROBE_INTERVAL_S = 0.05
PROBE_TIMEOUT_S = 5.0
REPEAT_S = 8.0  # body attacks are repeated back to back for this long: enough probes land while one is handled
LIVE_REQUEST = b"GET /health/live HTTP/1.1\r\nHost: probe\r\n\r\n"


# ---------------------------------------------------------------------------------------------- server
@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_bytes(self) -> int:
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_server(
    env: dict[str, str] | None = None, *, nofile: int | None = None, repo: Path = REPO_ROOT, log_dir: Path | None = None
) -> Iterator[ServerProcess]:
    """A `python -m service` process on a free port, ready; ``nofile`` caps its open-files limit."""
    port = free_port()
    full_env = {
        **os.environ,
        "PYTHONPATH": str(repo),
        "STYA2K_WEIGHTS": "random",
        "STYA2K_WARMUP": "false",
        "STYA2K_THREADS": "1",
        "STYA2K_LOG_LEVEL": "warning",
        "STYA2K_PORT": str(port),
        **(env or {}),
    }
    with contextlib.ExitStack() as stack:
        folder = Path(log_dir) if log_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        log_path = folder / f"server-{port}.log"
        log_file = stack.enter_context(log_path.open("wb"))

        def limit_files() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        process = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=repo, env=full_env, stdout=log_file, stderr=log_file,
            preexec_fn=limit_files,
        )  # fmt: skip
        server = ServerProcess(process, port, log_path)
        try:
            wait_ready(server)
            yield server
        finally:
            stop(process)


def wait_ready(server: ServerProcess, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}: {server.log_text()[-2000:]}")
        with contextlib.suppress(OSError):
            status, _ = http_request(server.port, b"GET /health/ready HTTP/1.1\r\nHost: x\r\n\r\n", timeout_s=2)
            if status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError("server did not become ready")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGTERM)  # the second skips the drain grace period
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# ---------------------------------------------------------------------------------------------- raw HTTP
def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response (Content-Length or until close)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response header ({data[:80]!r})")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while length is None or len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, body


def http_request(port: int, raw: bytes, timeout_s: float = 30.0) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(raw)
        return read_response(sock)


def post(path: str, body: bytes, content_type: str, api_key: str | None = None) -> bytes:
    key = f"X-API-Key: {api_key}\r\n" if api_key is not None else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n{key}"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


# ---------------------------------------------------------------------------------------------- probe
@dataclass
class Probe:
    """GET /health/live on a fresh connection every interval, in a thread; latencies in seconds."""

    port: int
    interval_s: float = PROBE_INTERVAL_S
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    failure_times: list[float] = field(default_factory=list)  # time.monotonic() of each failed probe's start
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Probe:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=PROBE_TIMEOUT_S + 5)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                status, _ = http_request(self.port, LIVE_REQUEST, PROBE_TIMEOUT_S)
                if status == 200:
                    self.latencies.append(time.monotonic() - started)
                else:
                    self.failures.append(f"status {status}")
                    self.failure_times.append(started)
            except OSError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                self.failure_times.append(started)
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)

        def pick(q: float) -> float | None:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1) if ordered else None

        return {
            "probes": len(ordered) + len(self.failures),
            "failures": len(self.failures),
            "failure_examples": self.failures[:3],
            "p50_ms": pick(0.5),
            "p99_ms": pick(0.99),
            "max_ms": round(ordered[-1] * 1000, 1) if ordered else None,
        }


class RSSSampler:
    """The server's RSS every 50 ms in a thread: peak during the attack."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.server.rss_bytes())
            self._stop.wait(0.05)


# ---------------------------------------------------------------------------------------------- payloads
def png_bytes(width: int, height: int, mode: str = "RGB") -> bytes:
    """A valid, well-compressing PNG of any size, built row by row without holding the pixels (zlib stream)."""
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    color_type = {"RGB": 2, "RGBA": 6, "L": 0}[mode]
    row = b"\x00" + bytes(range(256)) * (width * channels // 256) + b"\x7f" * (width * channels % 256)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def small_png() -> bytes:
    return png_bytes(64, 48)


def json_many_keys(keys: int) -> bytes:
    """A stylize JSON body with ``keys`` extra keys (the issue's 12.9 MB / one million keys)."""
    image = base64.b64encode(small_png()).decode()
    extra = ",".join(f'"k{i}":0' for i in range(keys))
    return f'{{"content":"{image}","style":"{image}",{extra}}}'.encode()


def json_many_nulls(items: int) -> bytes:
    """An interpolate JSON body with ``weights: [null, ...]`` of ``items`` entries (the issue's 3 million)."""
    image = base64.b64encode(small_png()).decode()
    return f'{{"content":"{image}","style":["{image}","{image}"],"weights":[{",".join(["null"] * items)}]}}'.encode()


def json_deep(depth: int) -> bytes:
    image = base64.b64encode(small_png()).decode()
    return f'{{"content":"{image}","style":"{image}","alpha":{"[" * depth}{"]" * depth}}}'.encode()


def json_big_string(size: int) -> bytes:
    """A body of ``size`` bytes that is mostly one valid-looking base64 string (not an image)."""
    filler = base64.b64encode(b"\x00" * (size * 3 // 4 - 200)).decode()
    image = base64.b64encode(small_png()).decode()
    return f'{{"content":"{filler}","style":"{image}"}}'.encode()


def multipart_body(parts: list[tuple[str, bytes, bool]], boundary: str = "stya2kbench") -> bytes:
    """(name, data, is_file) parts to a multipart/form-data body."""
    out = io.BytesIO()
    for name, data, is_file in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{name}.png"' if is_file else "")
        out.write(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


MULTIPART = "multipart/form-data; boundary=stya2kbench"


# ---------------------------------------------------------------------------------------------- attacks
def send_body_attack(
    port: int, path: str, body: bytes, content_type: str, copies: int = 1, repeat_for_s: float = 0.0
) -> dict[str, Any]:
    """``copies`` concurrent senders of this body, each repeating it until ``repeat_for_s`` has passed (at
    least once), so the probe samples the server while it handles them; statuses and durations."""
    return {**send_raw_attack(port, post(path, body, content_type), copies, repeat_for_s), "body_bytes": len(body)}


def send_raw_attack(port: int, raw: bytes, copies: int = 1, repeat_for_s: float = 0.0) -> dict[str, Any]:
    """``copies`` concurrent senders of this raw request (each on a new connection), as send_body_attack."""
    results: list[tuple[int | str, float]] = []
    until = time.monotonic() + repeat_for_s

    def one() -> None:
        while True:
            started = time.monotonic()
            try:
                status, _ = http_request(port, raw, timeout_s=300)
                results.append((status, time.monotonic() - started))
            except OSError as exc:
                results.append((type(exc).__name__, time.monotonic() - started))
            if time.monotonic() >= until:
                return

    threads = [threading.Thread(target=one) for _ in range(copies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts = collections.Counter(str(s) for s, _ in results)
    return {
        "statuses": sorted(counts),  # each status once; how many of each in status_counts
        "status_counts": dict(sorted(counts.items())),
        "requests": len(results),
        "max_request_s": round(max(t for _, t in results), 2),
        "body_bytes": 0,
    }


def big_header_request(header_bytes: int, path: str = "/v1/info") -> bytes:
    """A GET whose request line and headers take ``header_bytes`` in all (one long X-Pad header)."""
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-Pad: ".encode()
    return head + b"a" * (header_bytes - len(head) - 4) + b"\r\n\r\n"


def api_key_twice_request(key: str) -> bytes:
    """Two X-API-Key headers, a wrong one and then the right one (the last wins where a dict keeps the last)."""
    return (
        f"GET /v1/info HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-API-Key: wrong\r\n"
        f"X-API-Key: {key}\r\n\r\n"
    ).encode()


# U+2028, U+2029 and NEL (U+0085), percent-encoded: the server decodes them into the path it logs.
LINE_BREAK_PATH = "/v1/no-such-path-%E2%80%A8-%E2%80%A9-%C2%85-end"


def broken_log_records(log_text: str) -> int:
    """JSON log records that do not survive a reader splitting on every Unicode line break (str.splitlines)."""
    broken = 0
    for line in log_text.splitlines():
        if not line.startswith("{"):
            broken += 1
            continue
        try:
            json.loads(line)
        except ValueError:
            broken += 1
    return broken


def line_break_path_attack(server: ServerProcess) -> dict[str, Any]:
    raw = f"GET {LINE_BREAK_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    outcome = send_raw_attack(server.port, raw, repeat_for_s=REPEAT_S)
    time.sleep(0.2)  # the last access line
    return {**outcome, "note": f"{broken_log_records(server.log_text())} log lines broken by a line separator"}


def open_sockets(port: int, count: int, payload: bytes) -> list[socket.socket]:
    """``count`` connections that each send ``payload`` (maybe nothing) and then stall."""
    sockets = []
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            break
        if payload:
            with contextlib.suppress(OSError):
                sock.sendall(payload)
        sockets.append(sock)
    return sockets


def closed_by_server(sockets: list[socket.socket], wait_s: float) -> dict[str, Any]:
    """Wait up to ``wait_s`` for the server to close each socket; what each received and when."""
    deadline = time.monotonic() + wait_s
    started = time.monotonic()
    closed_after: list[float] = []
    statuses: dict[str, int] = {}
    pending = list(sockets)
    buffers: dict[int, bytes] = {}
    for sock in pending:
        sock.setblocking(False)
    while pending and time.monotonic() < deadline:
        still = []
        for sock in pending:
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                still.append(sock)
                continue
            except OSError:
                chunk = b""
            if chunk:
                buffers[sock.fileno()] = buffers.get(sock.fileno(), b"") + chunk
                still.append(sock)
                continue
            received = buffers.get(sock.fileno(), b"")
            key = received.split(b" ", 2)[1].decode() if received.startswith(b"HTTP/") else "closed"
            statuses[key] = statuses.get(key, 0) + 1
            closed_after.append(time.monotonic() - started)
        pending = still
        time.sleep(0.05)
    for sock in sockets:
        sock.close()
    return {
        "connections": len(sockets),
        "closed_by_server": len(closed_after),
        "still_open": len(pending),
        "answers": statuses,
        "last_closed_after_s": round(max(closed_after), 2) if closed_after else None,
    }


HALF_HEADER = b"POST /v1/stylize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
HALF_BODY = (
    b"POST /v1/stylize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
    b"Content-Length: 100000\r\n\r\n--x\r\nContent-Disposition: form-data; name=\"content\"\r\n\r\n"
)


def connection_attack(port: int, count: int, payload: bytes, wait_s: float) -> dict[str, Any]:
    return closed_by_server(open_sockets(port, count, payload), wait_s)


# ---------------------------------------------------------------------------------------------- the run
@dataclass(frozen=True)
class Attack:
    name: str
    what: str
    env: dict[str, str]
    run: Callable[[ServerProcess], dict[str, Any]]
    nofile: int | None = None


def attacks(full: bool) -> list[Attack]:
    scale = 1 if full else 100
    pixels_side = 6320 if full else 1000  # 6320^2 = 39.9 M pixels: just under the default 40 M limit
    # Default settings only: the same attacks also run against older checkouts, which refuse unknown names.
    fast_timeouts: dict[str, str] = {}
    rgba_size = f"{pixels_side}x{pixels_side}"
    return [
        Attack("none", "no attack (the probe alone: this machine's noise floor)", {},
               lambda s: (time.sleep(5), {"statuses": ["-"], "max_request_s": 0, "body_bytes": 0})[1]),
        Attack("json_keys", "JSON body with 1,000,000 extra keys (12.9 MB)", {},
               lambda s: send_body_attack(s.port, "/v1/stylize/json", json_many_keys(1_000_000 // scale),
                                          "application/json", repeat_for_s=REPEAT_S)),
        Attack("json_nulls", "JSON weights: [null x 3,000,000] (15 MB)", {},
               lambda s: send_body_attack(s.port, "/v1/interpolate/json", json_many_nulls(3_000_000 // scale),
                                          "application/json", repeat_for_s=REPEAT_S)),
        Attack("json_deep", "JSON nested 1,000,000 arrays deep", {},
               lambda s: send_body_attack(s.port, "/v1/stylize/json", json_deep(1_000_000 // scale),
                                          "application/json", repeat_for_s=REPEAT_S)),
        Attack("json_big_string", "JSON with one 19 MB base64 string (not an image)", {},
               lambda s: send_body_attack(s.port, "/v1/stylize/json", json_big_string(19_000_000 // scale),
                                          "application/json", repeat_for_s=REPEAT_S)),
        Attack("multipart_big", "multipart with a 19 MB file part (not an image) x 2 concurrent", {},
               lambda s: send_body_attack(s.port, "/v1/stylize", multipart_body(
                   [("content", os.urandom(19_000_000 // scale), True), ("style", small_png(), True)]), MULTIPART,
                   copies=2, repeat_for_s=REPEAT_S)),
        Attack("weights_text", "multipart weights='1,1,...' with 3,000,000 numbers", {},
               lambda s: send_body_attack(s.port, "/v1/interpolate", multipart_body(
                   [("content", small_png(), True), ("style", small_png(), True), ("style", small_png(), True),
                    ("weights", b",".join([b"1"] * (3_000_000 // scale)), False)]), MULTIPART,
                   repeat_for_s=REPEAT_S)),
        Attack("idle", "300 connections that send nothing (open-files limit 256)", fast_timeouts,
               lambda s: connection_attack(s.port, 300, b"", wait_s=30), nofile=256),
        Attack("idle_flood", "3000 connections that send nothing (open-files limit 4096, 1000 connections)",
               fast_timeouts, lambda s: connection_attack(s.port, 3000, b"", wait_s=30), nofile=4096),
        Attack("half_header", "300 connections that send half a header (open-files limit 256)", fast_timeouts,
               lambda s: connection_attack(s.port, 300, HALF_HEADER, wait_s=30), nofile=256),
        Attack("half_body", "300 connections that send the header and 80 bytes of a 100 kB body (limit 256)",
               fast_timeouts, lambda s: connection_attack(s.port, 300, HALF_BODY, wait_s=40), nofile=256),
        Attack("header_60k", "GET /v1/info with a 60 KB header (the stated limit is 16 KiB)", {},
               lambda s: send_raw_attack(s.port, big_header_request(60_000), repeat_for_s=REPEAT_S)),
        Attack("api_key_twice", "two X-API-Key headers, a wrong one then the right one", {"STYA2K_API_KEY": "k3y"},
               lambda s: send_raw_attack(s.port, api_key_twice_request("k3y"), repeat_for_s=REPEAT_S)),
        Attack("path_line_breaks", "a path with U+2028, U+2029 and NEL, logged at level info",
               {"STYA2K_LOG_LEVEL": "info"}, line_break_path_attack),
        Attack("rgba_spike", f"4 concurrent {rgba_size} RGBA PNGs (39.9 M pixels, 620 KiB each)",
               {"STYA2K_MAX_SIDE": "512", "STYA2K_DEFAULT_SIDE": "256", "STYA2K_STYLE_SIZE": "128"},
               lambda s: send_body_attack(s.port, "/v1/stylize", multipart_body(
                   [("content", png_bytes(pixels_side, pixels_side, "RGBA"), True), ("style", small_png(), True)]),
                   MULTIPART, copies=4)),
    ]  # fmt: skip


def run_attack(attack: Attack, repo: Path, log_dir: Path | None = None) -> dict[str, Any]:
    with running_server(attack.env, nofile=attack.nofile, repo=repo, log_dir=log_dir) as server:
        warm_up(server, attack.env.get("STYA2K_API_KEY"))  # first-use allocations are not the attack's
        time.sleep(0.5)
        before = server.rss_bytes()
        with RSSSampler(server) as rss, Probe(server.port) as probe:
            time.sleep(0.3)
            started = time.monotonic()
            outcome = attack.run(server)
            duration = time.monotonic() - started
            time.sleep(0.3)
        time.sleep(5)
        after = server.rss_bytes()
        alive = server.process.poll() is None
        log_text = server.log_text()
    return {
        "attack": attack.name,
        "what": attack.what,
        "outcome": outcome,
        "attack_s": round(duration, 2),
        "liveness": probe.summary(),
        "rss_before_mib": round(before / 2**20),
        "rss_peak_mib": round(rss.peak / 2**20),
        "rss_after_5s_mib": round(after / 2**20),
        "server_alive": alive,
        "resource_log_lines": log_text.count("out of system resource"),
        "log_lines": log_text.count("\n"),
    }


def warm_up(server: ServerProcess, api_key: str | None = None) -> None:
    """One ordinary transfer at the default output size: the model's first-use memory is in the baseline."""
    body = multipart_body([("content", png_bytes(1024, 1024), True), ("style", small_png(), True)])
    status, answer = http_request(server.port, post("/v1/stylize", body, MULTIPART, api_key), timeout_s=120)
    if status != 200:
        raise RuntimeError(f"warm-up request failed with {status}: {answer[:200]!r}")


def render(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"Measured {meta['date_utc']} on {meta['machine']}; command: `{meta['command']}`; code: {meta['repo']}.",
        "",
        "| attack | outcome | /health/live p50 / p99 / max | probe failures | RSS before / peak / 5 s after | log lines (EMFILE) |",  # noqa: E501
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        live = r["liveness"]
        outcome = r["outcome"]
        if "statuses" in outcome:
            shown = (f"{outcome.get('requests', 1)} x {', '.join(sorted(set(outcome['statuses'])))}, "
                     f"slowest {outcome['max_request_s']} s")
            if "note" in outcome:
                shown += f"; {outcome['note']}"
        else:
            shown = (f"{outcome['closed_by_server']}/{outcome['connections']} closed by the server "
                     f"(last after {outcome['last_closed_after_s']} s), answers {outcome['answers']}")
        lines.append(
            f"| {r['what']} | {shown} | {live['p50_ms']} / {live['p99_ms']} / {live['max_ms']} ms | "
            f"{live['failures']} of {live['probes']} | {r['rss_before_mib']} / {r['rss_peak_mib']} / "
            f"{r['rss_after_5s_mib']} MiB | {r['log_lines']} ({r['resource_log_lines']}) |"
        )  # fmt: skip
    return "\n".join(lines)


def machine() -> str:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0))
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {cores} cores, {memory:.1f} GiB, Python {sys.version.split()[0]}, load {os.getloadavg()[0]:.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attacks", default="all", help="comma-separated attack names, or all")
    parser.add_argument("--small", action="store_true", help="payloads 100x smaller (a quick look)")
    parser.add_argument("--repo", type=Path, default=REPO_ROOT, help="the checkout whose service is attacked")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default bench/results/...)")
    args = parser.parse_args(argv)
    chosen = attacks(full=not args.small)
    if args.attacks != "all":
        wanted = set(args.attacks.split(","))
        unknown = wanted - {a.name for a in chosen}
        if unknown:
            parser.error(f"unknown attacks {sorted(unknown)}; known: {', '.join(a.name for a in chosen)}")
        chosen = [a for a in chosen if a.name in wanted]
    meta = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "command": "python -m bench.reliability " + " ".join(argv if argv is not None else sys.argv[1:]),
        "repo": str(args.repo),
    }
    results = []
    for attack in chosen:
        sys.stderr.write(f"attack {attack.name}: {attack.what}\n")
        results.append(run_attack(attack, args.repo))
        sys.stderr.write(json.dumps(results[-1]) + "\n")
    out = args.out or RESULTS_DIR / f"reliability-{time.strftime('%Y%m%d-%H%M', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    sys.stdout.write(render(results, meta) + "\n")


if __name__ == "__main__":
    main()
