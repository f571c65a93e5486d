"""What this machine is and can do: the torch device to run on, the CPU's model name and feature flags.

One home for the checks that the trainer, the benchmarks and the service all make before they pick a device
or a precision.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")
# x86 flags of native bfloat16 arithmetic. Without them (AVX2 only) oneDNN emulates bf16 convolutions and
# autocast runs several times slower than float32 (measured 6-20x on AVX2: docs/BENCHMARKS.md).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# PyTorch's CPU allocator (c10 alloc_cpu) reads this once, at the process's first tensor allocation: with "1" it
# page-aligns every allocation of >= 2 MiB and madvises it MADV_HUGEPAGE.
THP_ENV = "THP_MEM_ALLOC_ENABLE"
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
HUGE_PAGE_BYTES = 2 << 20


def select_device(name: str, setting: str = "--device ") -> torch.device:
    """``auto`` -> cuda when available, else cpu; any other name (cpu, cuda, cuda:N, ...) as given.

    Asking for CUDA on a machine without it is a RuntimeError now, not a failure at the first tensor moved.
    ``setting`` is what the message says the choice came from: ``"--device "`` (a flag) or ``"STYA2K_DEVICE="``.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"{setting}{name} but CUDA is not available on this machine")
    return torch.device(name)


def _cpuinfo_value(keys: tuple[str, ...], path: Path) -> str | None:
    """The value of the first ``key: value`` line of /proc/cpuinfo whose key is one of ``keys``."""
    try:
        text = path.read_text(errors="replace")
    except OSError:  # not Linux, or no /proc
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return None


def cpu_flags(path: Path = CPUINFO) -> frozenset[str]:
    """The CPU feature flags the kernel reports (x86 ``flags``, Arm ``Features``); empty where there are none."""
    value = _cpuinfo_value(("flags", "Features"), path)
    return frozenset(value.split()) if value else frozenset()


def cpu_model(path: Path = CPUINFO) -> str:
    """The CPU's marketing name (``model name``), or "unknown"."""
    return _cpuinfo_value(("model name",), path) or platform.processor() or "unknown"


def cpu_capability() -> str:
    """torch's view of the CPU's vector unit (DEFAULT, AVX2, AVX512, ...)."""
    with contextlib.suppress(Exception):  # private-ish API: a torch without it must not break a start-up
        return str(torch.backends.cpu.get_cpu_capability())
    return "unknown"


def has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """AVX512-BF16 or AMX: without them bf16 convolutions are emulated and slower than float32."""
    return bool(set(NATIVE_BF16_FLAGS) & (cpu_flags() if flags is None else flags))


@dataclass(frozen=True)
class HugePages:
    """Whether this process's CPU tensors of >= 2 MiB live on transparent huge pages, and why (or why not)."""

    active: bool
    reason: str


def thp_mode(path: Path = THP_MODE_FILE) -> str | None:
    """The kernel's transparent huge page mode (always, madvise or never), or None where there is no such file."""
    try:
        text = path.read_text()
    except OSError:
        return None
    chosen = [word.strip("[]") for word in text.split() if word.startswith("[")]
    return chosen[0] if chosen else None


def request_huge_pages() -> None:
    """Ask PyTorch's CPU allocator for transparent huge pages, unless the user set THP_MEM_ALLOC_ENABLE already.

    Call it first in a program's main, before any tensor exists (the allocator reads the variable once). Why: a
    forward pass allocates and frees feature maps of tens of MiB (64 x 512 x 512 bf16 = 32 MiB); glibc serves each
    from a fresh mmap, and the kernel faults it in 4 KiB at a time, which cost as much as the decoder's convolutions
    at 512 px on a 2-core CPU. On 2 MiB pages the same pass ran 1.35-1.5x faster (docs/BENCHMARKS.md).
    """
    os.environ.setdefault(THP_ENV, "1")


def start_command(logger_name: str) -> str:
    """What a training or evaluation command does first: huge pages (before any tensor), a heap that keeps what
    is freed, logging, and the log lines that say whether both took (a later run's reader needs that to compare
    its speed); returns that line."""
    request_huge_pages()
    heap = keep_freed_memory()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    memory = f"huge pages: {huge_pages().reason}; heap: {heap}"
    logging.getLogger(logger_name).info("%s", memory)
    return memory


# glibc mallopt parameters (malloc.h) and its cap on the mmap threshold on 64-bit systems.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD_MAX = 32 << 20
_MALLOC_ENV = ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_freed_memory() -> str:
    """Let glibc's malloc keep freed memory for reuse instead of handing it back to the kernel; says what it did.

    Why: a training step allocates and frees hundreds of MiB of temporaries in blocks of 1-32 MiB. By default glibc
    serves the big ones by mmap and trims the heap's top as soon as 2x the (adaptive) threshold is free, so the
    next step faults the same memory in again, page by page: 17-19k page faults in the loss's A2K targets alone
    per 128 px step, which made them take 0.75 s instead of 0.3 s. With blocks of up to 32 MiB (glibc's ceiling)
    served from the heap and the trim point at 2 GiB, the faults drop to ~500 and the whole step ran 1.3x faster
    (docs/BENCHMARKS.md). The cost: the process keeps its peak heap mapped (it reuses it on every step).
    The user's own malloc settings (glibc.malloc.* in GLIBC_TUNABLES, MALLOC_*_) win; other C libraries are left
    alone. Idempotent: calling it again changes nothing.
    """
    chosen = sorted(name for name in _MALLOC_ENV if name in os.environ
                    and (name != "GLIBC_TUNABLES" or "glibc.malloc." in os.environ[name]))
    if chosen:
        return "as the environment sets it (" + ", ".join(chosen) + ")"
    if platform.libc_ver()[0] != "glibc":
        return "the C library's default (not glibc)"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "glibc's default (mallopt is not reachable)"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    refused = [name for name, param, value in (
        ("mmap threshold", _M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX), ("trim threshold", _M_TRIM_THRESHOLD, (1 << 31) - 1),
        ("top pad", _M_TOP_PAD, 64 << 20)) if mallopt(param, value) != 1]
    if refused:
        return "glibc refused part of it (" + ", ".join(refused) + "); the rest applies"
    return (f"glibc keeps freed memory (blocks up to {MMAP_THRESHOLD_MAX >> 20} MiB from the heap, "
            "trimmed past 2 GiB free)")


def huge_pages() -> HugePages:
    """Report whether `request_huge_pages` took effect in this process (a 4 MiB probe, never touched)."""
    if not sys.platform.startswith("linux"):
        return HugePages(False, "off: transparent huge pages are a Linux feature")
    mode = thp_mode()
    if mode in (None, "never"):
        return HugePages(False, f"off: the kernel's transparent huge pages are {mode or 'not available'}")
    setting = os.environ.get(THP_ENV)
    if setting != "1":
        return HugePages(False, f"off: {THP_ENV}={setting}" if setting is not None else f"off: {THP_ENV} unset")
    probe = torch.empty(2 * HUGE_PAGE_BYTES, dtype=torch.uint8)  # empty: no page is faulted in
    advised = _advised_huge(probe.data_ptr())
    del probe
    if advised is None:
        return HugePages(False, "off: /proc/self/smaps cannot be read, so huge pages cannot be confirmed")
    if not advised:
        return HugePages(False, f"off: a tensor was allocated before {THP_ENV}=1 was set (the allocator reads it once)")
    return HugePages(True, f"on: {THP_ENV}=1, kernel mode {mode}")


def _advised_huge(address: int, smaps: Path = Path("/proc/self/smaps")) -> bool | None:
    """Whether the mapping holding ``address`` carries MADV_HUGEPAGE (VmFlags ``hg``); None if unreadable."""
    try:
        lines = smaps.read_text().splitlines()
    except OSError:
        return None
    inside = False
    for line in lines:
        first = line.split(maxsplit=1)[0] if line else ""
        if first.endswith(":"):  # a field of the current mapping
            if inside and first == "VmFlags:":
                return "hg" in line.split()[1:]
            continue
        start, _, end = first.partition("-")  # a mapping's header: "start-end perms offset ..."
        try:
            inside = int(start, 16) <= address < int(end, 16)
        except ValueError:  # not a header we can read: its fields must not be taken for the previous mapping's
            inside = False
    return None
