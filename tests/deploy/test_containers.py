"""The container images for real: the CPU image built with podman from the unchanged Dockerfile (build
arguments only, deploy/docker/build-cpu.sh), run, health-checked, stopped, and load-balanced.

Proves, on the built image: the HEALTHCHECK is in the image (docker format) and passes once the replica is
ready; one request per transfer mode answers a real, decodable image of the content's size; the service is
not root; SIGTERM drains the request in flight and exits 0; a corrupt mounted weights file refuses to start
with the entry point's message. Then the compose topology in containers: two replicas and nginx (the
official image, or deploy/nginx/Containerfile on the same local base where it cannot be pulled) on a podman
network, nginx running the project's template rendered for the replicas' addresses: requests spread over
both, a SIGTERM drain and a SIGKILL mid-load each cost the client 0 failed requests.

Traffic goes only to 127.0.0.1 (ports published by podman) and to the podman network this module creates.
Every load loop is bounded in requests and time; every container and the network are removed at the end.
Skips with the reason where podman is missing or cannot run containers, or no base image / torch source can
be had (build-cpu.sh exits 77). STYA2K_SKIP_CONTAINERS=1 skips it; `-m "not containers"` too. With
STYA2K_CONTAINER_REPORT=<file> the measured times and counts are written there as JSON (docs/DEPLOY.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import resource
import shutil
import subprocess
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
PODMAN = shutil.which("podman")
IMAGE = "localhost/stya2k-serve:test"
LB_OFFICIAL = "docker.io/library/nginx:1.27-alpine"
LB_LOCAL = "localhost/stya2k-lb:local"
BUILD_TIMEOUT_S = 1800.0  # a cold build (local base + torch + deps) took ~10 min on the 2-core CI box
READY_TIMEOUT_S = 240.0
DRAIN_GRACE_S = 3
# Small output and style sizes keep warm-up and each request short on 2 shared cores; the shipped weights,
# the entry point and every layer of the image are the real ones.
REPLICA_ENV = {
    "STYA2K_DEFAULT_SIDE": "128",
    "STYA2K_STYLE_SIZE": "128",
    "STYA2K_DRAIN_GRACE_S": str(DRAIN_GRACE_S),
    "STYA2K_DRAIN_TIMEOUT_S": "20",
    "STYA2K_LOG_LEVEL": "info",
}

pytestmark = [
    pytest.mark.containers,
    pytest.mark.skipif(PODMAN is None, reason="podman is not installed (tests/run.sh installs podman, buildah, runc)"),
    pytest.mark.skipif(os.environ.get("STYA2K_SKIP_CONTAINERS") == "1", reason="STYA2K_SKIP_CONTAINERS=1"),
]

REPORT: dict[str, Any] = {}
# Why the image could not be had, once known: every later test fails or skips at once instead of rebuilding.
_BUILD_PROBLEM: dict[str, str] = {}


def _record(key: str, value: Any) -> None:
    REPORT[key] = value
    path = os.environ.get("STYA2K_CONTAINER_REPORT")
    if path:
        Path(path).write_text(json.dumps(REPORT, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------ podman helpers
def podman(*args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert PODMAN is not None
    result = subprocess.run([PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def ulimit_flags() -> list[str]:
    """Explicit ulimits: podman's defaults (nofile 1048576) exceed the hard limit of many hosts and runc then
    refuses to start the container ("error setting rlimits")."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 1048576 if hard == resource.RLIM_INFINITY else min(hard, 1048576)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=4096:4096"]


@dataclass
class Container:
    name: str

    def published_port(self, inner: int) -> int:
        out = podman("port", self.name, f"{inner}/tcp").stdout.strip().splitlines()[0]
        return int(out.rsplit(":", 1)[1])

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def state(self, template: str) -> str:
        return podman("inspect", "--format", template, self.name).stdout.strip()

    def signal(self, name: str) -> None:
        podman("kill", "--signal", name, self.name)

    def wait_exit(self, timeout: float) -> int:
        return int(podman("wait", self.name, timeout=timeout).stdout.strip().splitlines()[-1])


def run_container(name: str, image: str, *, env: dict[str, str], publish: int, extra: list[str] = ()) -> Container:
    podman("rm", "-f", "-t", "0", name, check=False)
    env_flags = [flag for key, value in env.items() for flag in ("-e", f"{key}={value}")]
    podman("run", "-d", "--name", name, *ulimit_flags(), *extra, "-p", f"127.0.0.1::{publish}", *env_flags, image)
    return Container(name)


def remove(*containers: Container) -> None:
    for container in containers:
        podman("rm", "-f", "-t", "0", container.name, check=False, timeout=60)


def wait_ready(url: str, container: Container, timeout: float = READY_TIMEOUT_S) -> float:
    """Seconds until GET url/health/ready answers 200; fails with the container's log tail if it exits first."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if httpx.get(f"{url}/health/ready", timeout=5).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        if container.state("{{.State.Status}}") not in ("running", "created", "configured"):
            raise AssertionError(f"{container.name} exited before it was ready:\n{container.logs()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"{container.name} not ready after {timeout:.0f} s:\n{container.logs()[-3000:]}")


# ------------------------------------------------------------------------------------------ images
def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _gradient(width: int, height: int, seed: int) -> Image.Image:
    rng = random.Random(seed)
    image = Image.linear_gradient("L").resize((width, height))
    channels = [image.rotate(rng.choice((0, 90, 180, 270))).resize((width, height)) for _ in range(3)]
    return Image.merge("RGB", channels)


CONTENT = _png(_gradient(96, 80, 1))
STYLES = [_png(_gradient(64, 64, 2)), _png(Image.new("RGB", (64, 64), (30, 60, 220)))]
LABELS = _png(Image.frombytes("L", (96, 80), bytes([0] * 48 + [1] * 48) * 80))


def decoded(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, f"{response.status_code}: {response.text[:500]}"
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


# ------------------------------------------------------------------------------------------ the image
@dataclass
class Built:
    image: str
    seconds: float
    size_bytes: int
    log: str


@pytest.fixture(scope="module")
def built() -> Built:
    """The CPU image, built by deploy/docker/build-cpu.sh (layer cache and local base reused when warm)."""
    if "skip" in _BUILD_PROBLEM:
        pytest.skip(_BUILD_PROBLEM["skip"])
    if "fail" in _BUILD_PROBLEM:
        pytest.fail(_BUILD_PROBLEM["fail"])
    try:
        return _build()
    except pytest.skip.Exception as exc:
        _BUILD_PROBLEM["skip"] = str(exc.msg)
        raise
    except (AssertionError, subprocess.TimeoutExpired) as exc:
        _BUILD_PROBLEM["fail"] = f"building or probing the image failed (see the first error): {str(exc)[:300]}"
        raise


def _build() -> Built:
    info = podman("info", timeout=120, check=False)
    if info.returncode != 0:
        pytest.skip(f"podman cannot run here: {info.stderr.strip()[-500:]}")
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "deploy/docker/build-cpu.sh"), IMAGE],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    seconds = time.monotonic() - started
    if result.returncode == 77:
        pytest.skip(f"the image cannot be built here: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, f"build-cpu.sh failed ({result.returncode}):\n{result.stderr[-5000:]}"
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout.strip())
    probe = podman("run", "--rm", *ulimit_flags(), "--entrypoint", "true", IMAGE, check=False, timeout=120)
    if probe.returncode != 0 and "OCI" in probe.stderr:
        pytest.skip(f"the container runtime refuses to start containers here: {probe.stderr.strip()[-500:]}")
    assert probe.returncode == 0, probe.stderr
    _record("build_seconds", round(seconds, 1))
    _record("image_bytes", size)
    return Built(IMAGE, seconds, size, result.stderr)


def test_image_is_small_runs_as_non_root_and_carries_the_healthcheck(built: Built) -> None:
    (inspected,) = json.loads(podman("image", "inspect", built.image).stdout)
    config = inspected["Config"]
    # podman shows the docker-format HEALTHCHECK at the top level, docker inside Config.
    health = inspected.get("Healthcheck") or config.get("Healthcheck") or {}
    assert health.get("Test") == ["CMD", "python3", "/app/deploy/docker/healthcheck.py"], (
        "no HEALTHCHECK in the image: build it in the docker format (the OCI format drops it)"
    )
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    start_period_s = int(dockerfile.split("--start-period=", 1)[1].split("s", 1)[0])
    assert health.get("StartPeriod") == start_period_s * 10**9
    assert config.get("User") == "stya2k"
    assert config.get("StopSignal") == "SIGTERM"
    # Nothing of the build in the final layer: no compiler, no pip, no pip cache, no torch headers/tests.
    leftovers = podman(
        "run", "--rm", *ulimit_flags(), "--entrypoint", "sh", built.image, "-c",
        "command -v gcc cc pip pip3; ls -d /root/.cache/pip /opt/venv/lib/python3*/site-packages/torch/include"
        " /opt/venv/lib/python3*/site-packages/torch/test 2>/dev/null; true",
    ).stdout.split()  # fmt: skip
    assert leftovers == [], f"build leftovers in the image: {leftovers}"
    # The shared job store's client is in the image (the redis extra): a replica joins Redis by setting alone.
    shared_store = podman(
        "run", "--rm", *ulimit_flags(), "--entrypoint", "python3", built.image, "-c",
        "import redis, service.redis_jobs; print(redis.__version__)",
    ).stdout.strip()  # fmt: skip
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    (pin,) = [p for p in project["optional-dependencies"]["redis"] if p.startswith("redis==")]
    assert shared_store == pin.removeprefix("redis=="), shared_store
    # The aim of issue 16 was < 1 GB (986 MB then). Video jobs (issue 20) add what no smaller package does: PyAV
    # with its FFmpeg (104 MB installed) and OpenCV for the smoother's optical flow (153 MB): 1253 MB measured.
    # The bound keeps the image from growing further unnoticed (docs/DEPLOY.md "Size" has the breakdown).
    assert built.size_bytes < 1_300_000_000, f"the CPU image is {built.size_bytes / 1e6:.0f} MB; bound: < 1.3 GB"


@dataclass
class Served:
    container: Container
    url: str
    ready_s: float


@pytest.fixture(scope="module")
def served(built: Built) -> Iterator[Served]:
    """One replica on the baked-in (shipped) weights, published on 127.0.0.1."""
    container = run_container(f"stya2k-test-one-{os.getpid()}", built.image, env=REPLICA_ENV, publish=8000)
    try:
        url = f"http://127.0.0.1:{container.published_port(8000)}"
        ready_s = wait_ready(url, container)
        _record("ready_seconds_1_replica_small_warmup", round(ready_s, 1))
        yield Served(container, url, ready_s)
    finally:
        remove(container)


def test_replica_is_ready_healthy_and_not_root(served: Served) -> None:
    check = podman("healthcheck", "run", served.container.name, check=False)
    assert check.returncode == 0, f"healthcheck failed on a ready replica: {check.stdout} {check.stderr}"
    status = podman("exec", served.container.name, "cat", "/proc/1/status").stdout
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert set(uids) == {"10001"}, f"the service (pid 1) runs with uids {uids}"
    assert "python3 -m service" in podman("exec", served.container.name, "cat", "/proc/1/cmdline").stdout.replace(
        "\x00", " "
    ), "the entry point must exec the service (pid 1 receives SIGTERM)"
    info = httpx.get(f"{served.url}/v1/info", timeout=10).json()
    assert info["device"] == "cpu"
    assert info["model"]["weights"] != "random", "the image must serve its baked-in weights"


def test_every_transfer_mode_answers_a_real_image(served: Served) -> None:
    content_size = Image.open(io.BytesIO(CONTENT)).size
    with httpx.Client(base_url=served.url, timeout=120) as client:
        stylized = decoded(
            client.post("/v1/stylize", files={"content": ("c.png", CONTENT), "style": ("s.png", STYLES[0])})
        )
        interpolated = decoded(
            client.post(
                "/v1/interpolate",
                files=[("content", ("c.png", CONTENT)), *[("style", (f"s{i}.png", s)) for i, s in enumerate(STYLES)]],
                data={"weights": "0.7,0.3"},
            )
        )
        multistyled = decoded(
            client.post(
                "/v1/multistyle",
                files=[
                    ("content", ("c.png", CONTENT)),
                    *[("style", (f"s{i}.png", s)) for i, s in enumerate(STYLES)],
                    ("labels", ("labels.png", LABELS)),
                ],
            )
        )
    for name, image in (("stylize", stylized), ("interpolate", interpolated), ("multistyle", multistyled)):
        assert image.size == content_size, f"{name}: {image.size} != content {content_size}"
        assert image.mode == "RGB"
        extrema = image.getextrema()
        assert any(high - low > 10 for low, high in extrema), f"{name}: a flat image {extrema}"
    assert stylized.tobytes() != interpolated.tobytes(), "interpolating two styles must differ from one style"


def test_the_entrypoint_sizes_the_torch_threads(served: Served) -> None:
    cpus = int(podman("exec", served.container.name, "nproc").stdout.strip())
    assert f"entrypoint: STYA2K_THREADS={cpus} ({cpus} CPUs / 1 replicas per host)" in served.container.logs()


def test_no_numpy_warning_at_start(served: Served) -> None:
    # torch warned "Failed to initialize NumPy" at every start while numpy was not installed (issue 18).
    logs = served.container.logs()
    assert "Failed to initialize NumPy" not in logs
    assert "UserWarning" not in logs, [line for line in logs.splitlines() if "Warning" in line]


def test_sigterm_drains_the_request_in_flight_and_exits_0(served: Served) -> None:
    # Runs last against this replica: it stops it.
    big = _png(_gradient(256, 192, 3))
    results: list[int | str] = []

    def slow_request() -> None:
        try:
            response = httpx.post(
                f"{served.url}/v1/stylize",
                files={"content": ("c.png", big), "style": ("s.png", STYLES[0])},
                data={"max_side": "256"},
                timeout=120,
            )
            results.append(response.status_code)
        except httpx.HTTPError as exc:
            results.append(type(exc).__name__)

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(0.5)  # the request is being read / queued / computed
    started = time.monotonic()
    served.container.signal("TERM")
    _wait(
        lambda: httpx.get(f"{served.url}/health/ready", timeout=5).status_code == 503,
        DRAIN_GRACE_S - 1,
        "readiness to turn 503 within the drain grace",
    )
    exit_code = served.container.wait_exit(timeout=60)
    drain_s = time.monotonic() - started
    thread.join(120)
    assert results == [200], f"the request in flight during the drain got {results}"
    assert exit_code == 0, served.container.logs()[-3000:]
    assert drain_s >= DRAIN_GRACE_S - 0.5, f"exited after {drain_s:.1f} s, before the drain grace"
    _record("drain_seconds_sigterm_to_exit", round(drain_s, 1))


def _readable_copy(source: Path) -> Path:
    """A copy of `source` the container user (uid 10001) can read: pytest's tmp_path is root-only (0700)."""
    target = Path(tempfile.mkdtemp(prefix="stya2k-weights-", dir="/var/tmp"))
    target.chmod(0o755)
    for item in source.iterdir():
        if item.is_file():
            shutil.copyfile(item, target / item.name)
            (target / item.name).chmod(0o644)
    return target


def test_corrupt_mounted_weights_refuse_to_start(built: Built) -> None:
    weights = _readable_copy(REPO_ROOT / "weights")
    try:
        manifest = (weights / "MANIFEST").read_text().split()
        name = manifest[1].lstrip("*")
        run = ["run", "--rm", *ulimit_flags(), "-v", f"{weights}:/app/weights:ro", built.image]
        # Control: the intact copy verifies (the entry point then runs the given command instead of the service).
        intact = podman(*run, "true", check=False, timeout=120)
        assert intact.returncode == 0, intact.stderr
        data = bytearray((weights / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (weights / name).write_bytes(bytes(data))
        assert hashlib.sha256(data).hexdigest() != manifest[0]
        corrupt = podman(*run, check=False, timeout=120)
        assert corrupt.returncode == 1, corrupt.stdout + corrupt.stderr
        assert "do not match /app/weights/MANIFEST" in corrupt.stderr
        assert "Uvicorn running" not in corrupt.stdout + corrupt.stderr
    finally:
        shutil.rmtree(weights, ignore_errors=True)


# ------------------------------------------------------------------------------------------ load balancing
def _lb_image() -> str:
    """nginx:1.27-alpine when it can be pulled, otherwise deploy/nginx/Containerfile on the local base."""
    if podman("image", "exists", LB_OFFICIAL, check=False).returncode == 0:
        return LB_OFFICIAL
    if podman("pull", "-q", LB_OFFICIAL, check=False, timeout=90).returncode == 0:
        return LB_OFFICIAL
    # The same local base as the replicas' image where no registry answers (cached: quick when warm).
    base_image = subprocess.run(
        ["bash", str(REPO_ROOT / "deploy/docker/local-base.sh")], capture_output=True, text=True, timeout=900
    )
    assert base_image.returncode == 0, base_image.stderr[-3000:]
    podman(
        "build", "--format", "docker", "--network", "host", *ulimit_flags(),
        "--build-arg", f"BASE_IMAGE={base_image.stdout.strip()}",
        "-t", LB_LOCAL, "-f", str(REPO_ROOT / "deploy/nginx/Containerfile"), str(REPO_ROOT / "deploy/nginx"),
        timeout=900,
    )  # fmt: skip
    return LB_LOCAL


@dataclass
class Topology:
    replicas: dict[str, Container]  # address inside the network -> replica
    replica_urls: dict[str, str]  # address -> published URL on 127.0.0.1
    lb: Container
    url: str

    def served_by(self) -> dict[str, int]:
        """Successful /v1/stylize answers so far per replica address, from nginx's JSON access log (the last
        address of upstream_addr is the replica that answered, earlier ones were tried and failed)."""
        counts: dict[str, int] = {}
        for line in self.lb.logs().splitlines():
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            if entry["uri"] == "/v1/stylize" and entry["status"] == 200:
                final = str(entry["upstream_addr"]).split(", ")[-1]
                counts[final] = counts.get(final, 0) + 1
        return counts


def _since(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before.get(key, 0) for key in after if after[key] > before.get(key, 0)}


def _create_network(name: str) -> str:
    """A podman bridge network with a random 10.x.y.0/24 subnet (static replica addresses survive restarts)."""
    podman("network", "rm", "-f", name, check=False)
    for _ in range(8):
        subnet = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
        if podman("network", "create", "--subnet", f"{subnet}.0/24", name, check=False).returncode == 0:
            return subnet
    raise AssertionError("could not create a podman network on any of 8 random subnets")


@pytest.fixture(scope="module")
def topology(built: Built, nginx_render: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    network = f"stya2k-test-{os.getpid()}"
    lb_image = _lb_image()
    subnet = _create_network(network)
    mac_tail = "{:02x}:{:02x}".format(*(int(part) for part in subnet.split(".")[1:]))
    containers: list[Container] = []
    try:
        replicas: dict[str, Container] = {}
        started = time.monotonic()
        for index in (1, 2):
            address = f"{subnet}.{10 + index}"
            env = {**REPLICA_ENV, "REPLICAS_PER_HOST": "2"}  # the entry point sizes threads = CPUs / 2
            container = run_container(
                f"stya2k-test-r{index}-{os.getpid()}", built.image, env=env, publish=8000,
                # A fixed MAC too: restarted with the same address but a new MAC, the replica was unreachable
                # from nginx until nginx's neighbour (ARP) entry for the address went stale (cold run, 40 s+).
                extra=["--network", network, "--ip", address, "--mac-address", f"02:42:0a:{mac_tail}:{index:02x}"],
            )  # fmt: skip
            containers.append(container)
            replicas[f"{address}:8000"] = container
        urls = {address: f"http://127.0.0.1:{c.published_port(8000)}" for address, c in replicas.items()}
        ready = [wait_ready(urls[address], container) for address, container in replicas.items()]
        _record("ready_seconds_2_replicas_small_warmup", [round(max(ready), 1), round(time.monotonic() - started, 1)])
        state_dir = tmp_path_factory.mktemp("lb")
        config = state_dir / "nginx.conf"
        config.write_text(nginx_render.render_file(backends=list(replicas), port=8080, state_dir="/var/cache/nginx"))
        config.chmod(0o644)
        state_dir.chmod(0o755)
        lb = run_container(
            f"stya2k-test-lb-{os.getpid()}", lb_image, env={}, publish=8080,
            extra=["--network", network, "--ip", f"{subnet}.10", "-v", f"{config}:/etc/nginx/nginx.conf:ro"],
        )  # fmt: skip
        containers.append(lb)
        url = f"http://127.0.0.1:{lb.published_port(8080)}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/lb/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise AssertionError(f"nginx did not come up:\n{lb.logs()[-3000:]}")
        _record("lb_image", lb_image)
        yield Topology(replicas, urls, lb, url)
    finally:
        remove(*containers)
        podman("network", "rm", "-f", network, check=False)


@dataclass
class Load:
    """`workers` clients posting /v1/stylize through nginx until stopped, `max_requests` or `max_seconds`."""

    url: str
    workers: int = 4
    max_requests: int = 300
    max_seconds: float = 60.0
    results: list[tuple[float, int | str]] = field(default_factory=list)  # (answered at, status or error)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        self._deadline = time.monotonic() + self.max_seconds
        self._threads = [threading.Thread(target=self._worker, daemon=True) for _ in range(self.workers)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(150)

    def _worker(self) -> None:
        with httpx.Client(timeout=120) as client:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                with self._lock:
                    if len(self.results) >= self.max_requests:
                        return
                try:
                    response = client.post(
                        f"{self.url}/v1/stylize", files={"content": ("c.png", CONTENT), "style": ("s.png", STYLES[1])}
                    )
                    outcome: int | str = response.status_code
                    if response.status_code == 200:
                        Image.open(io.BytesIO(response.content)).load()
                except (httpx.HTTPError, OSError) as exc:
                    outcome = type(exc).__name__
                with self._lock:
                    self.results.append((time.monotonic(), outcome))

    def wait_for(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.results) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(self.results) >= count, f"only {len(self.results)} answers in {timeout:.0f} s"

    def failures(self) -> list[tuple[float, int | str]]:
        return [result for result in self.results if result[1] != 200]


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_requests_spread_and_a_sigterm_drain_costs_no_request(topology: Topology) -> None:
    (_first, second) = topology.replicas
    before = topology.served_by()
    with Load(topology.url) as load:
        load.wait_for(12)
        spread = _since(before, topology.served_by())
        signalled = time.monotonic()
        topology.replicas[second].signal("TERM")
        exit_code = topology.replicas[second].wait_exit(timeout=60)
        drain_s = time.monotonic() - signalled
        answered = len(load.results)
        load.wait_for(answered + 8)
    assert set(spread) == set(topology.replicas), f"both replicas must serve: {spread}"
    assert load.failures() == [], f"client-visible failures during the drain: {load.failures()}"
    assert exit_code == 0, topology.replicas[second].logs()[-3000:]
    after = [t for t, _ in load.results if t > signalled + drain_s]
    assert after, "requests after the drained replica exited must still be served"
    _record("lb_sigterm", {"requests": len(load.results), "failures": 0, "drain_seconds": round(drain_s, 1),
                           "spread_before": spread})  # fmt: skip

    # Back to two replicas for the next test: the stopped one restarts with its address and settings.
    podman("start", topology.replicas[second].name)
    wait_ready(topology.replica_urls[second], topology.replicas[second])
    # nginx took it out for fail_timeout (10 s) when its connections were refused; wait until it serves again.
    rejoined = topology.served_by()
    with Load(topology.url, max_seconds=60) as load:
        try:
            _wait(lambda: second in _since(rejoined, topology.served_by()), 60, "the restarted replica to serve again")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; nginx's last lines:\n{topology.lb.logs()[-2000:]}") from None
    assert load.failures() == []


def test_a_sigkill_mid_load_costs_no_request(topology: Topology) -> None:
    (first, _second) = topology.replicas
    before = topology.served_by()
    with Load(topology.url) as load:
        load.wait_for(12)
        killed = time.monotonic()
        topology.replicas[first].signal("KILL")
        load.wait_for(len(load.results) + 16)
    assert load.failures() == [], f"client-visible failures after SIGKILL: {load.failures()}"
    after = [t for t, _ in load.results if t > killed]
    assert len(after) >= 16
    served = _since(before, topology.served_by())
    retried = sum(
        1
        for line in topology.lb.logs().splitlines()
        if line.startswith("{") and ", " in str(json.loads(line).get("upstream_addr", ""))
    )
    _record("lb_sigkill", {"requests": len(load.results), "failures": 0, "served": served, "retried": retried})
