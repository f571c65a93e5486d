"""Checks that make the one GPU lease command safe to spend device time on (run here, before the lease).

    python -m bench.gpu.lease_check wheels [--wheel-dir .whl]   # carried wheels resolve offline for the box
    python -m bench.gpu.lease_check size --carry .whl            # the tree that travels fits the 64 MiB
    python -m bench.gpu.lease_check argv bench.model ARGS...     # a step's arguments parse (no run)
    python -m bench.gpu.lease_check simulate-install             # the box's offline install, rehearsed here
    python3 -m bench.gpu.lease_check install                     # the offline install itself (on the box)
    python3 -m bench.gpu.lease_check onnxruntime [--note-file F] # the box's onnx / onnxruntime and its providers
    python3 -m bench.gpu.lease_check record REPORT NAME JSON     # a step's JSON joins gpu-tests.json's records

``wheels`` reads every carried wheel's metadata: each pin of bench/gpu/requirements-lease.txt must have a
wheel for the box's CPython (3.12), and every requirement of every carried wheel (markers evaluated for that
python on Linux x86-64) must be met by a carried wheel or by a package the box's image already holds.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # packaging is imported where used: `install` must run on the box with the stdlib alone
    from packaging.requirements import Requirement
    from packaging.tags import Tag
    from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO_ROOT / "bench" / "gpu" / "requirements-lease.txt"
# The lease box's python3 (/work/.library/device/KINDS.md: Python 3.12.3 with CUDA torch 2.11).
BOX_PYTHON = "3.12"
# Held by the box's image and deliberately not carried: the CUDA torch build and its own pillow and numpy
# (compiled and large: numpy alone would be 16 MiB of the 64).
BOX_PROVIDES = frozenset({"torch", "pillow", "numpy"})
# Runtime pins the lease does not carry: video jobs only, which the lease does not run, and too large for the
# carry budget (av 35 MB, OpenCV 50 MB); the service starts without them (video jobs answer 501 video_unavailable).
LEASE_SKIPS = frozenset({"av", "opencv-python-headless"})
# The onnxruntime backend runs on the box's own onnx and onnxruntime, not carried (onnxruntime-gpu's wheel is ~300
# MB; the CPU build is 17 MB for what the box already has). These are the box's versions when last seen
# (.library/device/KINDS.md), older than the project's [onnx] pins (1.23.2 / 1.31.1): the backend suites
# (tests/service/backends, tests/model/test_graphs.py) passed with exactly them on 2026-12-07. Older ones may work;
# the lease says so in its note rather than failing.
BOX_ONNX = {"onnx": "1.23.1", "onnxruntime": "1.30.0"}
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
CUDA_UNAVAILABLE = "CUDA provider unavailable: onnxruntime-gpu cannot travel"
CARRY_LIMIT_BYTES = 64 * 2**20  # what may travel to the device machine in one call
CARRY_MARGIN_BYTES = 4 * 2**20  # others commit meanwhile: keep room


@dataclass(frozen=True)
class Wheel:
    path: Path
    name: str  # canonical
    version: Version
    tags: frozenset[Tag]
    requires: tuple[Requirement, ...]


def read_wheel(path: Path) -> Wheel:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename

    name, version, _, tags = parse_wheel_filename(path.name)
    with zipfile.ZipFile(path) as archive:
        meta_name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(archive.read(meta_name).decode("utf-8", errors="replace"))
    requires = tuple(Requirement(r) for r in meta.get_all("Requires-Dist") or [])
    return Wheel(path, canonicalize_name(name), version, frozenset(tags), requires)


def box_supports(tags: Iterable[Tag], python: str = BOX_PYTHON) -> bool:
    """Whether CPython ``python`` on glibc x86-64 Linux can install a wheel with these tags."""
    cp = "cp" + python.replace(".", "")
    for tag in tags:
        interpreter_ok = tag.interpreter in (cp, "py3", f"py{python.replace('.', '')}") or (
            tag.abi == "abi3" and tag.interpreter.startswith("cp3") and int(tag.interpreter[3:]) <= int(cp[3:])
        )
        abi_ok = tag.abi in ("none", "abi3", cp)
        platform_ok = tag.platform == "any" or (
            tag.platform.endswith("_x86_64") and tag.platform.startswith(("manylinux", "linux"))
        )
        if interpreter_ok and abi_ok and platform_ok:
            return True
    return False


def marker_env(python: str = BOX_PYTHON) -> dict[str, str]:
    return {"python_version": python, "python_full_version": python + ".3", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def read_pins(path: Path = REQUIREMENTS) -> dict[str, Version]:
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    pins: dict[str, Version] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if not match:
            raise ValueError(f"{path}: expected NAME==VERSION, got {line!r}")
        pins[canonicalize_name(match.group(1))] = Version(match.group(2))
    return pins


def check_wheels(wheel_dir: Path, requirements: Path = REQUIREMENTS, python: str = BOX_PYTHON) -> list[str]:
    """Problems that would stop the offline install on the box (empty = it resolves)."""
    from packaging.utils import canonicalize_name

    pins = read_pins(requirements)
    wheels = [read_wheel(p) for p in sorted(wheel_dir.glob("*.whl"))]
    usable = [w for w in wheels if box_supports(w.tags, python)]
    problems: list[str] = []
    versions: dict[str, set[Version]] = {}
    for wheel in usable:
        versions.setdefault(wheel.name, set()).add(wheel.version)
    for name, found in sorted(versions.items()):
        if len(found) > 1:
            problems.append(f"{name}: several versions carried ({', '.join(map(str, sorted(found)))}); keep one")
    for name, version in pins.items():
        if version not in versions.get(name, set()):
            problems.append(f"{name}=={version}: no wheel for CPython {python} x86-64 Linux in {wheel_dir}")
    for name in sorted(set(versions) - set(pins)):
        problems.append(f"{name}: carried but not in {requirements.name} (stale? it would not be installed)")
    env = marker_env(python)
    for wheel in usable:
        for req in wheel.requires:
            if req.marker is not None and not req.marker.evaluate(env):
                continue  # an extra, or another python / platform
            name = canonicalize_name(req.name)
            if name in BOX_PROVIDES:
                continue
            carried = versions.get(name, set())
            if not any(req.specifier.contains(v, prereleases=True) for v in carried):
                problems.append(f"{wheel.name} needs {req}; carried: {sorted(map(str, carried)) or 'nothing'}")
    return problems


def travelling_bytes(carry: list[str], root: Path = REPO_ROOT) -> tuple[int, dict[str, int]]:
    """Bytes the device call sends: tracked + untracked-not-ignored files, plus the carried paths."""

    def git_files(*args: str) -> list[Path]:
        out = subprocess.run(["git", "ls-files", "-z", *args], cwd=root, capture_output=True, check=True).stdout
        return [root / p for p in out.decode().split("\0") if p]

    parts: dict[str, int] = {}
    tree = git_files() + git_files("--others", "--exclude-standard")
    parts["working tree"] = sum(p.stat().st_size for p in tree if p.is_file() and not p.is_symlink())
    for item in carry:
        path = root / item
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
        parts[item] = sum(p.stat().st_size for p in files)
    return sum(parts.values()), parts


PIP_INSTALL = ("-m", "pip", "install", "-q", "--no-index", "--no-cache-dir", "--no-compile",
               "--disable-pip-version-check")
# What the service stack must import once installed (PIL and torch are the box's own).
STACK_IMPORTS = "import fastapi, fastapi_offline, starlette, uvicorn, pydantic, multipart, prometheus_client, httpx"


def install(python: str, wheel_dir: Path, requirements: Path = REQUIREMENTS,
            fallback_target: Path | None = None) -> int:
    """The lease's offline install. Into ``python``'s own environment first, so pip resolves against what the box
    holds and takes only missing or differently pinned packages from ``wheel_dir``; if that environment is not
    writable, every carried pin goes into ``fallback_target`` (to be put on PYTHONPATH)."""
    env = {**os.environ, "PIP_ROOT_USER_ACTION": "ignore"}  # the box runs as root; an env var: old pips lack the flag
    command = [python, *PIP_INSTALL, "--find-links", str(wheel_dir), "-r", str(requirements)]
    if subprocess.run(command, env=env).returncode == 0:
        return 0
    if fallback_target is None:
        return 1
    sys.stderr.write(f"install: in-place install failed; installing every pin into {fallback_target}\n")
    return subprocess.run([*command, "--no-deps", "--target", str(fallback_target)], env=env).returncode


def fake_box_packages(site_packages: Path, versions: dict[str, str]) -> None:
    """Register the box's own packages (metadata only) in a stand-in environment, so pip sees them installed."""
    for name, version in versions.items():
        info = site_packages / f"{name}-{version}.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "INSTALLER").write_text("box\n")
        (info / "RECORD").write_text("")


def find_python(version: str = BOX_PYTHON) -> str | None:
    """A working CPython ``version`` interpreter on this machine (PATH, then pyenv's versions), if any."""
    candidates = [shutil.which(f"python{version}") or ""]
    candidates += sorted(str(p) for p in Path.home().glob(f".pyenv/versions/{version}*/bin/python{version}"))
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    return None


def simulate_install(python: str | None, wheel_dir: Path, requirements: Path = REQUIREMENTS) -> int:
    """Rehearse the lease's install here: a fresh venv of the box's CPython version holding (as metadata) the
    box's torch / pillow / numpy, then the same offline install and the service stack's imports."""
    python = python or find_python()
    if python is None:
        sys.stderr.write(f"simulate-install: no CPython {BOX_PYTHON} here; the offline install is not rehearsed\n")
        return 0
    with tempfile.TemporaryDirectory(prefix="lease-box-") as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        box_python = str(venv / "bin" / "python")
        site = subprocess.run([box_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
        fake_box_packages(Path(site), {"torch": "2.11.0", "pillow": "12.0.0", "numpy": "2.5.2"})
        if install(box_python, wheel_dir, requirements) != 0:
            return 1
        return subprocess.run([box_python, "-c", STACK_IMPORTS]).returncode


def onnxruntime_report() -> tuple[list[str], str]:
    """Lines describing this python's onnx / onnxruntime and the providers, and a note for the lease summary:
    empty when a GPU provider is there, else what is missing (stdlib + the packages themselves: runs on the box)."""
    lines, notes = [], []
    versions: dict[str, str | None] = {}
    for name in BOX_ONNX:  # the modules' own versions: onnxruntime-gpu's distribution has another name
        try:
            versions[name] = str(importlib.import_module(name).__version__)
        except ImportError:
            versions[name] = None
    lines.append("onnx " + str(versions["onnx"]) + ", onnxruntime " + str(versions["onnxruntime"])
                 + f" (checked with {BOX_ONNX['onnx']} / {BOX_ONNX['onnxruntime']})")
    if versions["onnx"] is None or versions["onnxruntime"] is None:
        missing = [name for name, version in versions.items() if version is None]
        return lines, f"{' and '.join(missing)} missing: the onnxruntime backend cannot run here"
    older = [name for name, version in versions.items() if version_tuple(version) < version_tuple(BOX_ONNX[name])]
    if older:
        notes.append(f"older than checked: {', '.join(f'{n} {versions[n]}' for n in older)}")
    import onnxruntime as ort

    available = list(ort.get_available_providers())
    lines.append(f"onnxruntime providers: {', '.join(available)}; device {ort.get_device()}")
    if not any(name in available for name in GPU_PROVIDERS):
        notes.insert(0, f"{CUDA_UNAVAILABLE} (onnxruntime {versions['onnxruntime']} has {', '.join(available)})")
    return lines, "; ".join(notes)


def version_tuple(version: str) -> tuple[int, ...]:
    """'1.30.0' -> (1, 30, 0); a suffix ('1.31.1+cu13', 'rc1') is dropped (no packaging needed on the box)."""
    parts = []
    for part in version.split("+", 1)[0].split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def add_record(report: Path, name: str, data_path: Path) -> None:
    """Put one JSON document into a gpu-tests.json report's records (created if the tests did not write one): the
    lease brings back at most 8 files, so a small step's figures travel in the report instead of a file of their
    own."""
    import json

    data = json.loads(data_path.read_text())
    document: dict[str, Any] = {"meta": {}, "sessions": [], "tests": {}, "records": {}}
    if report.is_file():
        document = json.loads(report.read_text())
    document.setdefault("records", {})[name] = data
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(document, indent=1) + "\n")


def check_argv(module: str, argv: list[str]) -> None:
    """Parse a step's arguments with the module's own parser (SystemExit on a bad flag or value)."""
    parse = importlib.import_module(module).parse_args
    parse(argv)


MAX_RETURNED_FILES = 8  # what comes back from $OUT after one device call
FILE_NAME = re.compile(r"[A-Za-z0-9._-]+")


class _Collector:
    """pytest plugin: the node ids a collection finds."""

    def __init__(self) -> None:
        self.nodeids: list[str] = []

    def pytest_collection_finish(self, session: Any) -> None:
        self.nodeids = [item.nodeid for item in session.items]


def collect_gpu_tests() -> list[str]:
    import pytest

    collector = _Collector()
    args = ["-q", "-p", "no:cacheprovider", "-m", "gpu", "--collect-only", str(REPO_ROOT / "tests" / "gpu")]
    code = pytest.main(args, plugins=[collector])
    if code not in (0, 5):
        raise RuntimeError(f"collecting tests/gpu failed (pytest exit {code})")
    return collector.nodeids


def selects(expression: str, nodeid: str) -> bool:
    """Whether pytest's ``-k`` expression picks a test, for the forms the lease uses: words joined by ``and``,
    each optionally ``not`` (a word matches when it is in the node id)."""
    for term in expression.split(" and "):
        negate, word = term.startswith("not "), term.removeprefix("not ").strip()
        if (word in nodeid) == negate:
            return False
    return True


def collect_paths(paths: list[str]) -> str | None:
    """Collect test paths in a child pytest (no marker filter): None when they hold tests, else the problem."""
    missing = [p for p in paths if not (REPO_ROOT / p).exists()]
    if missing:
        return f"test paths missing: {', '.join(missing)}"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only", *paths],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        return f"collecting {' '.join(paths)} failed (pytest exit {proc.returncode}): {proc.stdout[-500:]}"
    return None


def repeated_flags(argv: list[str]) -> list[str]:
    """Flags given more than once. argparse keeps the last value without a word, so in the lease's own argv a
    repeat means a later value silently replaces the lease's (a rehearsal's tiny size left outside its mode)."""
    counts = Counter(a.split("=", 1)[0] for a in argv if a.startswith("--"))
    return sorted(flag for flag, n in counts.items() if n > 1)


def check_plan(plan: Path) -> list[str]:
    """Verify a dry run's plan: every step's arguments parse, wheels resolve, test selections are non-empty,
    and the files the lease writes under $OUT can all come back."""
    problems: list[str] = []
    outputs = {"lease.log", "summary.json"}
    nodeids: list[str] | None = None
    for line in plan.read_text().splitlines():
        kind, *fields = line.split("\t")
        if kind == "argv":
            module, *args = fields
            try:
                check_argv(module, args)
            except SystemExit as exc:
                if exc.code not in (0, None):
                    problems.append(f"{module} {' '.join(args)}: arguments do not parse ({exc.code})")
            repeats = repeated_flags(args)
            if repeats:
                problems.append(f"{module}: {', '.join(repeats)} given twice: the last value replaces the lease's")
            outputs.update(Path(args[i + 1]).name for i, a in enumerate(args[:-1]) if a == "--out")
        elif kind == "wheels":
            wheel_dir, requirements = Path(fields[0]), Path(fields[1])
            if wheel_dir.is_dir():
                problems += [f"wheels: {p}" for p in check_wheels(wheel_dir, requirements)]
                total, _ = travelling_bytes([wheel_dir.name])
                if total > CARRY_LIMIT_BYTES - CARRY_MARGIN_BYTES:
                    problems.append(f"{total / 2**20:.1f} MiB would travel with {wheel_dir.name}: over the limit")
            else:
                sys.stderr.write(f"plan: WARNING {wheel_dir} is missing; fill it (bash bench/gpu/fetch_wheels.sh) "
                                 "before the lease, or the install step fails there\n")
        elif kind == "collect":
            outputs.add("gpu-tests.json")
            nodeids = collect_gpu_tests() if nodeids is None else nodeids
            select = fields[0]
            if not [n for n in nodeids if selects(select, n)]:
                problems.append(f"tests/gpu -m gpu -k {select!r} selects no test")
        elif kind == "pytest":
            if any(path.startswith("tests/gpu") for path in fields):
                outputs.add("gpu-tests.json")
            problem = collect_paths(fields)
            if problem:
                problems.append(problem)
        else:
            problems.append(f"unknown plan line {line!r}")
    bad_names = sorted(n for n in outputs if not FILE_NAME.fullmatch(n))
    if bad_names:
        problems.append(f"output names that would not come back: {bad_names}")
    if len(outputs) > MAX_RETURNED_FILES:
        problems.append(f"{len(outputs)} files under $OUT ({sorted(outputs)}); only {MAX_RETURNED_FILES} come back")
    sys.stderr.write(f"plan: {len(outputs)} output files: {', '.join(sorted(outputs))}\n")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    wheels = sub.add_parser("wheels", help="carried wheels resolve offline on the box")
    wheels.add_argument("--wheel-dir", type=Path, default=REPO_ROOT / ".whl")
    wheels.add_argument("--requirements", type=Path, default=REQUIREMENTS)
    wheels.add_argument("--python", default=BOX_PYTHON)
    size = sub.add_parser("size", help="what travels fits the device call's limit")
    size.add_argument("--carry", action="append", default=[])
    for command, text in (("install", "the lease's offline install (on the box)"),
                          ("simulate-install", "that install in a stand-in venv of the box's python (here)")):
        cmd = sub.add_parser(command, help=text)
        cmd.add_argument("--wheel-dir", type=Path, default=REPO_ROOT / ".whl")
        cmd.add_argument("--requirements", type=Path, default=REQUIREMENTS)
        cmd.add_argument("--python", default=sys.executable if command == "install" else None)
        cmd.add_argument("--fallback-target", type=Path)
    plan_cmd = sub.add_parser("plan", help="verify a dry run's plan file (inference_lease.sh --dry-run)")
    plan_cmd.add_argument("plan", type=Path)
    ort_cmd = sub.add_parser("onnxruntime", help="this python's onnx / onnxruntime and providers (on the box)")
    ort_cmd.add_argument("--note-file", type=Path, help="write the note for the lease summary here")
    record_cmd = sub.add_parser("record", help="put a JSON file into a gpu-tests.json report's records")
    record_cmd.add_argument("report", type=Path)
    record_cmd.add_argument("name")
    record_cmd.add_argument("data", type=Path)
    args_cmd = sub.add_parser("argv", help="a step's arguments parse")
    args_cmd.add_argument("module")
    args_cmd.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "wheels":
        if not args.wheel_dir.is_dir():
            sys.stderr.write(f"{args.wheel_dir} does not exist: run bash bench/gpu/fetch_wheels.sh\n")
            return 1
        problems = check_wheels(args.wheel_dir, args.requirements, args.python)
        for problem in problems:
            sys.stderr.write(f"wheels: {problem}\n")
        if not problems:
            count = len(list(args.wheel_dir.glob("*.whl")))
            sys.stderr.write(f"wheels: {count} wheels in {args.wheel_dir} resolve for CPython {args.python}\n")
        return 1 if problems else 0
    if args.command == "size":
        total, parts = travelling_bytes(args.carry)
        detail = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in parts.items())
        limit = CARRY_LIMIT_BYTES - CARRY_MARGIN_BYTES
        sys.stderr.write(f"size: {total / 2**20:.1f} MiB travels ({detail}); limit {limit / 2**20:.0f} MiB\n")
        return 0 if total <= limit else 1
    if args.command == "install":
        return install(args.python, args.wheel_dir, args.requirements, args.fallback_target)
    if args.command == "simulate-install":
        return simulate_install(args.python, args.wheel_dir, args.requirements)
    if args.command == "onnxruntime":
        lines, note = onnxruntime_report()
        sys.stderr.write("".join(f"onnxruntime: {line}\n" for line in lines))
        if note:
            sys.stderr.write(f"onnxruntime: {note}\n")
            if args.note_file:
                args.note_file.write_text(note + "\n")
        return 1 if note.endswith("cannot run here") else 0
    if args.command == "record":
        add_record(args.report, args.name, args.data)
        return 0
    if args.command == "plan":
        problems = check_plan(args.plan)
        for problem in problems:
            sys.stderr.write(f"plan: {problem}\n")
        sys.stderr.write("plan: OK\n" if not problems else f"plan: {len(problems)} problem(s)\n")
        return 1 if problems else 0
    check_argv(args.module, args.rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
