"""model.hardware: device choice, /proc/cpuinfo parsing, the native-bf16 rule (trainer, bench and service)."""

from __future__ import annotations

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
