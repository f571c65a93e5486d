"""Fixtures of the CUDA tests (marker ``gpu``): the device, the sizes, LPIPS and the JSON report.

Without CUDA every test here skips with a reason. ``GPU_LEASE_REHEARSE=1`` runs them on the CPU at tiny
sizes instead (the CUDA-only parts still skip), so the GPU lease command cannot fail on a typo
(bench/gpu/inference_lease.sh --rehearse). ``GPU_LEASE_REPORT=path.json`` writes every measured figure
and every test's outcome there at the end of the session.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # the bench package is not installed; the box has no editable install
    sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_helpers, shared by the test modules here

REHEARSE_ENV = "GPU_LEASE_REHEARSE"
REPORT_ENV = "GPU_LEASE_REPORT"
LPIPS_ENV = "GPU_LEASE_LPIPS"
# Where LPIPS weights may be: the folder the lease carries (.whl/lpips, filled by bench/gpu/fetch_wheels.sh),
# then the shared data beside the checkout.
LPIPS_CANDIDATES = (REPO_ROOT / ".whl" / "lpips", REPO_ROOT.parent / "shared" / "weights" / "lpips")
NO_CUDA = ("needs CUDA: no GPU on this machine (the GPU lease runs these: bash bench/gpu/inference_lease.sh; "
           f"{REHEARSE_ENV}=1 rehearses them on the CPU at tiny sizes)")

_REPORT: dict[str, Any] = {"tests": {}, "records": {}}  # filled during the session, written at its end


def rehearsing() -> bool:
    return not torch.cuda.is_available() and os.environ.get(REHEARSE_ENV) == "1"


@pytest.fixture(scope="session")
def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if rehearsing():
        return torch.device("cpu")
    pytest.skip(NO_CUDA)


@pytest.fixture(scope="session")
def side(device: torch.device) -> int:
    """Output side of the tests: the service's default on a GPU, tiny on the CPU rehearsal."""
    return 512 if device.type == "cuda" else 64


@pytest.fixture(scope="session")
def style_size(device: torch.device) -> int:
    """The service's default style side on a GPU; tiny on the CPU, whose fp16/bf16 autocast is emulated (slow)."""
    return 256 if device.type == "cuda" else 32


@pytest.fixture(scope="session")
def lpips_metric(device: torch.device) -> Any | None:
    """The LPIPS metric on the device, or None when no weights folder is around (the figure is then missing)."""
    from model.lpips import LPIPS, LpipsError

    env = os.environ.get(LPIPS_ENV)
    for folder in ([Path(env)] if env else []) + list(LPIPS_CANDIDATES):
        try:
            return LPIPS.from_folder(folder).to(device)
        except LpipsError:
            continue
    return None


@pytest.fixture(scope="session")
def gpu_report() -> dict[str, Any]:
    """Named records of measured figures; written to $GPU_LEASE_REPORT with the test outcomes."""
    return _REPORT["records"]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "tests/gpu/" not in report.nodeid.replace("\\", "/"):
        return
    if report.when == "call" or report.outcome != "passed":
        entry: dict[str, Any] = {"outcome": report.outcome, "when": report.when,
                                 "seconds": round(report.duration, 3)}
        if report.outcome == "skipped" and isinstance(report.longrepr, tuple):
            entry["reason"] = str(report.longrepr[2])
        elif report.outcome == "failed":
            entry["error"] = str(report.longrepr)[-3000:]
        _REPORT["tests"][report.nodeid] = entry


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get(REPORT_ENV)
    if not path or not _REPORT["tests"]:
        return
    meta: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "rehearsal": rehearsing()}
    if torch.cuda.is_available():
        meta["gpu"] = torch.cuda.get_device_name(0)
    target = Path(path)
    report: dict[str, Any] = {"meta": meta, "sessions": [], "tests": {}, "records": {}}
    if target.is_file():  # the lease runs the compile test in a later step: join the earlier report
        with contextlib.suppress(json.JSONDecodeError):
            report = json.loads(target.read_text())
    report["sessions"].append({"exitstatus": int(exitstatus), "tests": len(_REPORT["tests"])})
    report["tests"].update(_REPORT["tests"])
    report["records"].update(_REPORT["records"])
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=1, default=str) + "\n")
