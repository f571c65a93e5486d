"""What this machine is and can do: the torch device to run on, the CPU's model name and feature flags.

One home for the checks that the trainer, the benchmarks and the service all make before they pick a device
or a precision.
"""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")
# x86 flags of native bfloat16 arithmetic. Without them (AVX2 only) oneDNN emulates bf16 convolutions and
# autocast runs several times slower than float32 (measured 6-20x on AVX2: docs/BENCHMARKS.md).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


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
