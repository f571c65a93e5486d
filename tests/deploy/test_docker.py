"""Static checks of the Dockerfile, .dockerignore, the entry point and the health check script.

These tests parse the files and hold them to what docs/DEPLOY.md promises, and run the two shell/Python helpers
the image uses for real; they need no container engine. tests/deploy/test_containers.py builds and runs the image.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shlex
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

from service.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
ENTRYPOINT = REPO_ROOT / "deploy" / "docker" / "entrypoint.sh"


# ------------------------------------------------------------------------------------------ Dockerfile model
@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    directives: dict[str, str]  # parser directives such as `# syntax=...`
    global_args: dict[str, str | None]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        matches = [s for s in self.stages if s.name == name]
        assert matches, f"no stage named {name!r}; stages: {[s.name for s in self.stages]}"
        return matches[0]


def _logical_lines(text: str) -> Iterator[str]:
    """Instruction lines with backslash continuations joined and comment lines dropped."""
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        yield (pending + stripped).strip()
        pending = ""
    assert not pending, "the Dockerfile ends inside a line continuation"


def parse_dockerfile(text: str) -> Dockerfile:
    directives: dict[str, str] = {}
    for raw in text.splitlines():
        match = re.match(r"#\s*(\w+)\s*=\s*(\S+)", raw)
        if not match:
            break
        directives[match.group(1).lower()] = match.group(2)
    global_args: dict[str, str | None] = {}
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name))
        elif not stages:
            assert keyword == "ARG", f"only ARG may come before the first FROM, found {keyword}"
            arg_name, _, default = args.partition("=")
            global_args[arg_name.strip()] = default.strip() or None
        else:
            stages[-1].instructions.append(Instruction(keyword, args.strip()))
    return Dockerfile(directives, global_args, stages)


def _env_pairs(env_args: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in shlex.split(env_args))


def _copy_sources(args: str) -> tuple[list[str], bool]:
    """(sources, is_from_another_stage) of one COPY instruction."""
    words = args.split()
    flags = [w for w in words if w.startswith("--")]
    paths = [w for w in words if not w.startswith("--")]
    return paths[:-1], any(f.startswith("--from=") for f in flags)


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text())


# ------------------------------------------------------------------------------------------ .dockerignore
def _ignore_patterns() -> list[tuple[re.Pattern[str], bool]]:
    """(regex, is_exclusion) per line, in Docker's syntax: `**` any depth, `*` within one name, `!` re-include."""
    patterns = []
    for raw in (REPO_ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        glob = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(glob):
            if glob.startswith("**/", i):
                regex += "(?:.*/)?"  # any number of directories, none included
                i += 3
            elif glob.startswith("**", i):
                regex += ".*"
                i += 2
            elif glob[i] == "*":
                regex += "[^/]*"
                i += 1
            elif glob[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(glob[i])
                i += 1
        patterns.append((re.compile(f"^{regex}$"), not negated))
    return patterns


def is_ignored(relative_path: str) -> bool:
    """Whether Docker leaves `relative_path` out of the build context (last matching pattern wins; a pattern
    matching a parent directory matches everything inside it)."""
    parts = relative_path.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for pattern, excludes in _ignore_patterns():
        if any(pattern.match(candidate) for candidate in candidates):
            ignored = excludes
    return ignored


def test_dockerignore_keeps_only_what_the_image_needs() -> None:
    for needed in ("pyproject.toml", "service/app.py", "model/stya2k.py", "weights/MANIFEST", "stya2k_client/client.py",
                   "service/presets/presets.json", "service/presets/thumbnails/starry_night.jpg",
                   "deploy/docker/entrypoint.sh", "deploy/docker/healthcheck.py"):  # fmt: skip
        assert not is_ignored(needed), f"{needed} is needed in the image but .dockerignore drops it"
    for unwanted in (".git/config", ".venv/bin/python", "tests/service/test_app.py", "runs/ckpt.pt",
                     "service/__pycache__/app.cpython-311.pyc", "docs/API.md", "bench/x.py"):  # fmt: skip
        assert is_ignored(unwanted), f"{unwanted} would be sent to the Docker daemon"


# ------------------------------------------------------------------------------------------ Dockerfile
def test_dockerfile_parses_with_buildkit_syntax(dockerfile: Dockerfile) -> None:
    assert dockerfile.directives.get("syntax", "").startswith("docker/dockerfile:"), (
        "the first line must select the BuildKit Dockerfile syntax (cache mounts, COPY --chmod)"
    )
    assert [s.name for s in dockerfile.stages] == ["base-cuda", "base-cpu", "base", "requirements", "deps", "runtime"]


def test_gpu_is_default_and_cpu_is_a_build_argument(dockerfile: Dockerfile) -> None:
    assert dockerfile.global_args.get("VARIANT") == "cuda"
    assert dockerfile.stage("base").base == "base-${VARIANT}"
    cuda_base = dockerfile.global_args["CUDA_BASE_IMAGE"] or ""
    assert cuda_base.startswith("nvidia/cuda:") and "-runtime-" in cuda_base, cuda_base
    assert dockerfile.stage("base-cuda").base == "${CUDA_BASE_IMAGE}"
    assert dockerfile.stage("base-cpu").base == "${CPU_BASE_IMAGE}"

    def torch_index(stage: str) -> str:
        env: dict[str, str] = {}
        for args in dockerfile.stage(stage).all("ENV"):
            env.update(_env_pairs(args))
        return env["TORCH_DEFAULT_INDEX_URL"]

    assert re.search(r"/whl/cu\d+$", torch_index("base-cuda")), "the GPU image must get torch's CUDA build"
    assert torch_index("base-cpu").endswith("/whl/cpu"), "the CPU image must get torch's CPU build"
    deps_runs = " ".join(dockerfile.stage("deps").all("RUN"))
    assert "TORCH_INDEX_URL" in dockerfile.stage("deps").all("ARG"), "the index is a build argument"
    assert '--no-deps --index-url "${TORCH_INDEX_URL:-$TORCH_DEFAULT_INDEX_URL}"' in deps_runs, (
        "torch alone from its index (--no-deps), so a substitute index needs to hold only torch"
    )
    assert "pip install -r /tmp/requirements.txt" in deps_runs, "everything else, torch's dependencies too, from PyPI"
    assert "--mount=type=cache" in deps_runs, "pip downloads should be cached between builds"


def test_dependency_layer_depends_only_on_pyproject(dockerfile: Dockerfile) -> None:
    assert dockerfile.stage("requirements").all("COPY") == ["pyproject.toml /tmp/pyproject.toml"]
    copies = dockerfile.stage("deps").all("COPY")
    assert copies == ["--from=requirements /tmp/requirements.txt /tmp/requirements.txt"], (
        "the deps stage must copy nothing but the extracted pins, so code and tool-setting changes keep the"
        " dependency layers cached"
    )
    runtime = dockerfile.stage("runtime")
    copied = [_copy_sources(args)[0] for args in runtime.all("COPY")]
    order = [src[0] for src in copied]
    assert order.index("weights/") < order.index("model/"), "weights change less often than the code"
    assert order[-1] == "service/", "the service code, changed most often, is the last layer"


def test_copy_sources_exist_and_are_in_the_build_context(dockerfile: Dockerfile) -> None:
    for stage in dockerfile.stages:
        for args in stage.all("COPY"):
            sources, from_stage = _copy_sources(args)
            if from_stage:
                continue
            for source in sources:
                assert (REPO_ROOT / source).exists(), f"COPY {source}: no such path in the repository"
                assert not is_ignored(source), f"COPY {source}: excluded by .dockerignore"


def test_runtime_runs_as_non_root_with_health_check_and_drain(dockerfile: Dockerfile) -> None:
    runtime = dockerfile.stage("runtime")
    users = runtime.all("USER")
    assert users and users[-1] not in ("root", "0", "0:0"), "the service must not run as root"
    assert any("useradd" in run and "--uid 10001" in run for run in runtime.all("RUN"))

    assert runtime.all("STOPSIGNAL") == ["SIGTERM"], "the service drains on SIGTERM"
    (healthcheck,) = runtime.all("HEALTHCHECK")
    command = healthcheck.split(" CMD ", 1)[1]
    assert "/app/deploy/docker/healthcheck.py" in command
    assert "/health/ready" in (REPO_ROOT / "deploy/docker/healthcheck.py").read_text()
    start_period = re.search(r"--start-period=(\d+)s", healthcheck)
    # Two replicas on a shared 2-core host took up to 183 s to become ready (docs/DEPLOY.md).
    assert start_period and int(start_period.group(1)) >= 240, "loading + warm-up needs a start period"

    env: dict[str, str] = {}
    for args in runtime.all("ENV"):
        env.update(_env_pairs(args))
    known = {f"STYA2K_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    unknown = {name for name in env if name.startswith("STYA2K_")} - known
    assert not unknown, f"the service refuses unknown settings, and the image sets {unknown}"
    assert env["STYA2K_HOST"] == "0.0.0.0", "inside a container the service must listen on all interfaces"
    assert Settings.from_env({k: v for k, v in env.items() if k.startswith("STYA2K_")})

    (entrypoint,) = runtime.all("ENTRYPOINT")
    assert entrypoint == '["/app/deploy/docker/entrypoint.sh"]'
    assert runtime.all("CMD") == ['["python3", "-m", "service"]']
    assert os.access(ENTRYPOINT, os.X_OK), "entrypoint.sh must be executable"


def test_weights_are_checked_against_the_manifest_at_build(dockerfile: Dockerfile) -> None:
    runs = " ".join(dockerfile.stage("runtime").all("RUN"))
    assert "sha256sum --check --strict --ignore-missing MANIFEST" in runs


# ------------------------------------------------------------------------------------------ entrypoint.sh
def _run_entrypoint(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(ENTRYPOINT), "sh", "-c", "echo started"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=20,
    )


@pytest.fixture()
def weights_dir(tmp_path: Path) -> Path:
    weights = tmp_path / "weights"
    weights.mkdir()
    payload = b"not a real checkpoint, only bytes to hash"
    (weights / "stya2k-v1.pt").write_bytes(payload)
    (weights / "MANIFEST").write_text(f"{hashlib.sha256(payload).hexdigest()}  stya2k-v1.pt\n")
    return weights


def test_entrypoint_starts_the_service_on_weights_matching_the_manifest(weights_dir: Path) -> None:
    result = _run_entrypoint({"STYA2K_WEIGHTS": str(weights_dir / "stya2k-v1.pt")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "started"


def test_entrypoint_refuses_altered_weights(weights_dir: Path) -> None:
    (weights_dir / "stya2k-v1.pt").write_bytes(b"tampered")
    result = _run_entrypoint({"STYA2K_WEIGHTS": str(weights_dir / "stya2k-v1.pt")})
    assert result.returncode == 1
    assert "started" not in result.stdout
    assert "has sha256" in result.stderr and "MANIFEST expects" in result.stderr


def test_entrypoint_refuses_weights_missing_from_the_manifest(weights_dir: Path) -> None:
    other = weights_dir / "other.pt"
    other.write_bytes(b"x")
    result = _run_entrypoint({"STYA2K_WEIGHTS": str(other)})
    assert result.returncode == 1
    assert "does not list other.pt" in result.stderr


def test_entrypoint_refuses_a_missing_weights_file(tmp_path: Path) -> None:
    result = _run_entrypoint({"STYA2K_WEIGHTS": str(tmp_path / "absent.pt")})
    assert result.returncode == 1
    assert "does not exist" in result.stderr


def _threads_after_entrypoint(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(ENTRYPOINT), "sh", "-c", 'echo "$STYA2K_THREADS ${REPLICAS_PER_HOST:-unset}"'],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "STYA2K_WEIGHTS": "random", **env},
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_entrypoint_gives_each_replica_its_share_of_the_cpus() -> None:
    cpus = len(os.sched_getaffinity(0))
    alone = _threads_after_entrypoint({})
    assert alone.returncode == 0, alone.stderr
    shared = _threads_after_entrypoint({"REPLICAS_PER_HOST": "2"})
    crowded = _threads_after_entrypoint({"REPLICAS_PER_HOST": str(4 * cpus)})
    explicit = _threads_after_entrypoint({"REPLICAS_PER_HOST": "2", "STYA2K_THREADS": "3"})
    # The cgroup quota may lower the count below the affinity mask; never below 1, never above it.
    alone_threads = int(alone.stdout.split()[0])
    assert 1 <= alone_threads <= cpus
    assert shared.stdout.split() == [str(max(1, alone_threads // 2)), "unset"], "not a service setting: removed"
    assert crowded.stdout.split()[0] == "1"
    assert explicit.stdout.split()[0] == "3", "an explicit STYA2K_THREADS wins"
    assert "replicas per host" in shared.stderr
    refused = _threads_after_entrypoint({"REPLICAS_PER_HOST": "two"})
    assert refused.returncode == 1 and "not a positive whole number" in refused.stderr


def test_entrypoint_skips_the_check_for_random_weights() -> None:
    result = _run_entrypoint({"STYA2K_WEIGHTS": "random"})
    assert result.returncode == 0 and result.stdout.strip() == "started"
    assert "tests only" in result.stderr


# ------------------------------------------------------------------------------------------ healthcheck.py
class _ReadinessHandler(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = type(self).status if self.path == "/health/ready" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass


@pytest.fixture()
def readiness_server() -> Iterator[tuple[ThreadingHTTPServer, type[_ReadinessHandler]]]:
    handler = type("Handler", (_ReadinessHandler,), {"status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_healthcheck_follows_readiness(
    healthcheck_module: ModuleType,
    readiness_server: tuple[ThreadingHTTPServer, type[_ReadinessHandler]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, handler = readiness_server
    monkeypatch.setenv("STYA2K_PORT", str(server.server_address[1]))
    assert healthcheck_module.main() == 0
    handler.status = 503  # loading or draining
    assert healthcheck_module.main() == 1
    server.shutdown()
    server.server_close()
    assert healthcheck_module.main() == 1, "a replica that does not answer is unhealthy"
