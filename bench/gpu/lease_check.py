"""Checks that make the one GPU lease command safe to spend device time on (run here, before the lease).

    python -m bench.gpu.lease_check wheels [--wheel-dir .whl]   # carried wheels resolve offline for the box
    python -m bench.gpu.lease_check size --carry .whl            # the tree that travels fits the 64 MiB
    python -m bench.gpu.lease_check argv bench.model ARGS...     # a step's arguments parse (no run)

``wheels`` reads every carried wheel's metadata: each pin of bench/gpu/requirements-lease.txt must have a
wheel for the box's CPython (3.12), and every requirement of every carried wheel (markers evaluated for that
python on Linux x86-64) must be met by a carried wheel or by a package the box's image already holds.
"""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.tags import Tag
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO_ROOT / "bench" / "gpu" / "requirements-lease.txt"
# The lease box's python3 (/work/.library/device/KINDS.md: Python 3.12.3 with CUDA torch 2.11).
BOX_PYTHON = "3.12"
# Held by the box's image and deliberately not carried: the CUDA torch build and its own pillow.
BOX_PROVIDES = frozenset({"torch", "pillow"})
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
            negate, word = select.startswith("not "), select.removeprefix("not ")
            chosen = [n for n in nodeids if (word in n) != negate]
            if not chosen:
                problems.append(f"tests/gpu -m gpu -k {select!r} selects no test")
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
    plan_cmd = sub.add_parser("plan", help="verify a dry run's plan file (inference_lease.sh --dry-run)")
    plan_cmd.add_argument("plan", type=Path)
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
