"""Shared helpers of the benchmark scripts: machine description, timing, peak memory, matmul roofline,
JSON results and the generated sections of docs/BENCHMARKS.md.

Nothing here is a timed test: the scripts record what they measure and say on which machine.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import resource
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from model import hardware

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
DOC_PATH = REPO_ROOT / "docs" / "BENCHMARKS.md"
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ------------------------------------------------------------------------------------------------ machine
def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def concurrent_processes(pattern: str = "training.train") -> list[str]:
    """Command lines of other processes matching ``pattern`` (e.g. a training run sharing the CPU)."""
    found = []
    own = os.getpid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == own:
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if pattern in cmdline and not _is_stopped(proc):
            found.append(cmdline[:200])
    return found


def _is_stopped(proc: Path) -> bool:
    """A process paused with SIGSTOP (state T) does not compete for the CPU."""
    try:
        stat = (proc / "stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].startswith(("T", "t"))


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "model", "service", "bench"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": socket.gethostname(),
        "cpu": hardware.cpu_model(),
        "cores": usable_cores(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "git": git_revision(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    # The model.* names: runs started before training/ split from model/ keep their command line until they end.
    training = [line for name in ("training.train", "training.campaign", "model.train", "model.campaign")
                for line in concurrent_processes(name)]
    info["concurrent_training"] = bool(training)
    if training:
        info["concurrent_processes"] = training
    return info


def machine_line(meta: dict[str, Any]) -> str:
    device = meta.get("gpu") or f"CPU only ({meta['torch_threads']} torch threads)"
    shared = (" **The CPU was shared with a concurrent training run (`training.train`) during the measurement.**"
              if meta.get("concurrent_training") else "")
    return (f"{meta['date_utc']}, {meta['cpu']} ({meta['cores']} cores, {meta['memory_gib']} GiB), device {device}, "
            f"torch {meta['torch']}, Python {meta['python']}, git {meta['git']}.{shared}")


def select_device(name: str) -> torch.device:
    """`model.hardware.select_device` for a benchmark's ``--device``: a missing GPU ends the script with the
    message, not a traceback."""
    try:
        return hardware.select_device(name)
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None


# ------------------------------------------------------------------------------------------------ timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    samples_s: list[float]
    warmup_s: list[float] = field(default_factory=list)
    warmup_counted: bool = False  # the warm-up call alone exceeded the budget and is the (only) sample

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples_s)

    def as_dict(self) -> dict[str, Any]:
        return {
            "median_s": self.median_s,
            "min_s": min(self.samples_s),
            "mean_s": statistics.fmean(self.samples_s),
            "samples": len(self.samples_s),
            "warmup_s": [round(x, 6) for x in self.warmup_s],
            "warmup_counted": self.warmup_counted,
        }


def time_calls(fn: Callable[[], Any], device: torch.device, *, warmup: int, min_iters: int, max_iters: int,
               budget_s: float) -> Timing:
    """Wall time of ``fn`` (device-synchronised), repeated until ``max_iters`` or ``budget_s`` is spent.

    When the first warm-up call alone takes longer than the budget (a big config on a CPU), it is kept as
    the single sample rather than paying for another call; the result says so (``warmup_counted``).
    """
    warm: list[float] = []
    for _ in range(warmup):
        started = time.perf_counter()
        fn()
        synchronize(device)
        warm.append(time.perf_counter() - started)
        if warm[0] > budget_s:
            return Timing([warm[0]], warm, warmup_counted=True)
    samples: list[float] = []
    spent = 0.0
    while len(samples) < max_iters and (len(samples) < min_iters or spent < budget_s):
        started = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - started)
        spent += samples[-1]
    return Timing(samples, warm)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


# ------------------------------------------------------------------------------------------------ memory
def _proc_status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of a code region.

    CUDA: ``torch.cuda.max_memory_allocated`` (exact tensor bytes of the caching allocator).
    CPU: the process's resident-set high-water mark. It is reset to the current RSS by writing 5 to
    /proc/self/clear_refs (Linux >= 4.0), so the region's peak is VmHWM - VmRSS at the reset, in a fresh
    process per config (the caller's job) so earlier configs' freed-but-cached heap cannot hide growth.
    Where clear_refs is not writable it falls back to getrusage(RUSAGE_SELF).ru_maxrss deltas, which miss
    peaks lower than an earlier high-water mark (``method`` says which was used).

    The kernel's VmHWM is not monotone between reads: it is max(current RSS, a high-water mark that is only
    updated on some unmaps), so memory returned by other means (madvise, a shrinking heap) can make a later read
    lower than an earlier one. Every read here is folded into a running maximum, so the peak never goes down.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = ""
        self.baseline_bytes = 0
        self._highest_seen = 0

    def start(self) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_bytes = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            return
        self._highest_seen = 0
        try:
            Path("/proc/self/clear_refs").write_text("5")
            rss = _proc_status_kib("VmRSS")
            if rss is None:
                raise OSError("no VmRSS")
            self.baseline_bytes = rss * 1024
            self.method = "VmHWM after clear_refs reset (fresh process)"
        except OSError:
            self.baseline_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.method = "getrusage ru_maxrss delta (fresh process)"

    def peak_bytes(self) -> tuple[int, int]:
        """(peak over the baseline, absolute peak) in bytes since start()."""
        if self.device.type == "cuda":
            synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method.startswith("VmHWM"):
            peak = (_proc_status_kib("VmHWM") or 0) * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self._highest_seen = peak = max(self._highest_seen, peak)
        return max(0, peak - self.baseline_bytes), peak


# ------------------------------------------------------------------------------------------------ roofline
def matmul_flops_per_s(device: torch.device, dtype: torch.dtype, n: int, budget_s: float = 3.0) -> dict[str, Any]:
    """Measured dense (n x n) @ (n x n) throughput in the given dtype: the device's practical compute ceiling."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
    timing = time_calls(lambda: torch.mm(a, b), device, warmup=2, min_iters=3, max_iters=50, budget_s=budget_s)
    flops = 2.0 * n**3
    return {"n": n, "median_s": timing.median_s, "min_s": min(timing.samples_s), "samples": len(timing.samples_s),
            "flops_per_s": flops / min(timing.samples_s)}


# ------------------------------------------------------------------------------------------------ results
def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, sort_keys=False, default=str) + "\n")


def load_results(prefix: str, results_dir: Path = RESULTS_DIR) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted(results_dir.glob(f"{prefix}*.json")):
        try:
            out.append((path, json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError):
            continue
    return out


DOC_HEADER = """# Benchmarks

Generated by the scripts in `bench/` (each rewrites only its own section, between its markers).
Raw results: `bench/results/*.json`. Nothing here is a timed unit test; numbers depend on the machine named
with each table.
"""


def update_doc_section(doc: Path, section: str, body: str) -> None:
    """Replace (or append) the block between ``<!-- BEGIN section -->`` and ``<!-- END section -->``."""
    begin, end = f"<!-- BEGIN {section} -->", f"<!-- END {section} -->"
    text = doc.read_text() if doc.is_file() else DOC_HEADER
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def parse_int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"expected comma-separated integers, got {text!r}") from None


def parse_choice_list(text: str, allowed: Iterable[str], what: str) -> list[str]:
    allowed = tuple(allowed)
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad:
        raise SystemExit(f"unknown {what} {bad}; allowed: {', '.join(allowed)}")
    return items
