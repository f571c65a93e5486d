"""model.hardware: device choice, /proc/cpuinfo parsing, the native-bf16 rule, huge pages (trainer, bench, service)."""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model import hardware

X86 = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu avx2 fma avx512_bf16\n\nprocessor\t: 1\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd bf16\nCPU implementer\t: 0x41\n"


def _cpuinfo(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return path


def test_cpu_flags_and_model_are_read_from_cpuinfo(tmp_path: Path) -> None:
    x86 = _cpuinfo(tmp_path, X86)
    assert hardware.cpu_flags(x86) == frozenset({"fpu", "avx2", "fma", "avx512_bf16"})
    assert hardware.cpu_model(x86) == "AMD EPYC 7B13"
    assert hardware.cpu_flags(_cpuinfo(tmp_path, ARM)) == frozenset({"fp", "asimd", "bf16"})
    assert hardware.cpu_flags(tmp_path / "missing") == frozenset()
    assert hardware.cpu_model(tmp_path / "missing")  # platform's answer or "unknown", never empty


def test_native_bf16_needs_avx512_bf16_or_amx() -> None:
    assert hardware.NATIVE_BF16_FLAGS == ("avx512_bf16", "amx_bf16")
    assert hardware.has_native_bf16(frozenset({"avx2", "avx512_bf16"}))
    assert hardware.has_native_bf16(frozenset({"amx_bf16"}))
    assert not hardware.has_native_bf16(frozenset({"avx2", "fma", "avx512f"}))
    assert hardware.has_native_bf16() == bool(set(hardware.NATIVE_BF16_FLAGS) & hardware.cpu_flags())


def test_cpu_capability_is_torchs_name() -> None:
    assert hardware.cpu_capability() == str(torch.backends.cpu.get_cpu_capability())


def test_select_device_auto_and_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    assert hardware.select_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hardware.select_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert hardware.select_device("auto") == torch.device("cuda")
    assert hardware.select_device("cuda:1") == torch.device("cuda:1")


def test_asking_for_a_missing_gpu_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"^--device cuda but CUDA is not available on this machine$"):
        hardware.select_device("cuda")
    with pytest.raises(RuntimeError, match=r"^STYA2K_DEVICE=cuda:0 but CUDA is not available"):
        hardware.select_device("cuda:0", setting="STYA2K_DEVICE=")


def test_thp_mode_reads_the_bracketed_choice(tmp_path: Path) -> None:
    mode_file = tmp_path / "enabled"
    mode_file.write_text("always [madvise] never\n")
    assert hardware.thp_mode(mode_file) == "madvise"
    mode_file.write_text("[never]\n")
    assert hardware.thp_mode(mode_file) == "never"
    assert hardware.thp_mode(tmp_path / "missing") is None


HUGE_PAGES_PROBE = """
import sys
if sys.argv[1] == "late":
    import torch
    torch.ones(3)  # the allocator reads THP_MEM_ALLOC_ENABLE at the first allocation
import service.cli, service.engine  # importing the service allocates nothing
from model.hardware import huge_pages, request_huge_pages
request_huge_pages()
state = huge_pages()
print(state.active, state.reason)
"""


def _probe(mode: str, env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-c", HUGE_PAGES_PROBE, mode], capture_output=True, text=True,
                          env=env, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.skipif(hardware.thp_mode() not in ("always", "madvise"), reason="no transparent huge pages here")
def test_huge_pages_are_on_in_a_fresh_process_and_report_why_not_otherwise() -> None:
    env = {k: v for k, v in os.environ.items() if k != hardware.THP_ENV}
    assert _probe("fresh", env).startswith("True on: THP_MEM_ALLOC_ENABLE=1")
    assert _probe("fresh", {**env, hardware.THP_ENV: "0"}) == "False off: THP_MEM_ALLOC_ENABLE=0"
    assert "a tensor was allocated before" in _probe("late", env)


def test_huge_pages_off_where_the_kernel_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "thp_mode", lambda path=hardware.THP_MODE_FILE: "never")
    assert hardware.huge_pages() == hardware.HugePages(False, "off: the kernel's transparent huge pages are never")


SMAPS = """\
7f0000000000-7f0000400000 rw-p 00000000 00:00 0
Size:               4096 kB
VmFlags: rd wr mr mw me ac hg
7f0000400000-7f0000800000 rw-p 00000000 00:00 0
Size:               4096 kB
VmFlags: rd wr mr mw me ac
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]
Size:                  4 kB
not-a-header line the parser cannot read
VmFlags: rd wr hg
"""


def test_smaps_vmflags_decide_per_mapping(tmp_path: Path) -> None:
    smaps = tmp_path / "smaps"
    smaps.write_text(SMAPS)
    assert hardware._advised_huge(0x7F0000001000, smaps) is True
    assert hardware._advised_huge(0x7F0000400000, smaps) is False  # the end of one mapping starts the next
    assert hardware._advised_huge(0x1000, smaps) is None  # in no mapping
    # An unreadable header ends the mapping before it (here one without VmFlags, as older kernels write): the
    # unknown mapping's "hg" must not be credited to the vsyscall page.
    assert hardware._advised_huge(0xFFFFFFFFFF600000, smaps) is None
    assert hardware._advised_huge(0x7F0000001000, tmp_path / "missing") is None


HEAP_PROBE = """
import ctypes, sys
from model import hardware
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
said = hardware.keep_freed_memory() if sys.argv[1] == "keep" else "-"
import torch
x = torch.ones(16 << 20, dtype=torch.uint8)  # 16 MiB: above glibc's default (adaptive, from 128 KiB) mmap threshold
before = libc.mallinfo2().fordblks  # bytes free inside the heap
del x
print(said)
print(libc.mallinfo2().fordblks - before)  # what the free added to the heap, kept for the next allocation
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not hasattr(ctypes.CDLL(None), "mallinfo2"),
                    reason="glibc's mallopt, and mallinfo2 (glibc >= 2.33) to look inside the heap")
def test_freed_memory_stays_in_the_heap_for_the_next_step() -> None:
    def probe(mode: str, **env: str) -> tuple[str, int]:
        clean = {k: v for k, v in os.environ.items() if k not in hardware._MALLOC_ENV}
        out = subprocess.run([sys.executable, "-c", HEAP_PROBE, mode], env={**clean, **env},
                             cwd=Path(__file__).resolve().parents[2],
                             capture_output=True, text=True, check=True, timeout=120).stdout.split("\n")
        return out[0], int(out[1])

    said, kept = probe("keep")
    assert said.startswith("glibc keeps freed memory") and kept >= 16 << 20
    _, default_kept = probe("default")
    assert default_kept < 16 << 20  # by default the block was mmapped and went straight back to the kernel
    said, kept = probe("keep", MALLOC_TRIM_THRESHOLD_="0")  # the user's own setting wins
    assert said == "as the environment sets it (MALLOC_TRIM_THRESHOLD_)" and kept < 16 << 20
    said, _ = probe("keep", GLIBC_TUNABLES="glibc.rtld.optional_static_tls=512")  # not a malloc tunable
    assert said.startswith("glibc keeps freed memory")
