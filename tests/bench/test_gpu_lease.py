"""The GPU lease command (bench/gpu/inference_lease.sh, issue 14) stays runnable: its dry run resolves every
step, its cheap rehearsal steps pass on the CPU, the wheel check catches what would stop the offline install,
and the report renders the lease's output. No GPU needed, nothing timed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from packaging.tags import Tag

from bench.gpu import lease_check, report

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "bench" / "gpu" / "inference_lease.sh"
STEPS = ["env", "install", "gpu-tests", "model-throughput", "service", "model-memory", "tiling", "compile-test",
         "model-compile", "backend-tests", "backends"]


def run_lease(tmp_path: Path, *args: str, timeout_s: float,
              extra_env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    # The python running the tests (a worktree without its own .venv would otherwise get the system python3).
    env = {"PYTHON": sys.executable, **os.environ, "OUT": str(tmp_path), **(extra_env or {})}
    env.pop("LEASE_MODE", None)
    env.pop("LEASE_ONLY", None)
    proc = subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout_s)
    summary = json.loads((tmp_path / "summary.json").read_text())
    return proc, summary


def test_dry_run_resolves_every_step(tmp_path: Path) -> None:
    proc, summary = run_lease(tmp_path, "--dry-run", timeout_s=300)
    log = (tmp_path / "lease.log").read_text()
    assert proc.returncode == 0, log[-4000:]
    assert [s["step"] for s in summary["steps"]] == STEPS
    assert all(s["status"] == "planned" for s in summary["steps"]), summary
    assert "plan: OK" in log and "8 output files" in log
    # The lease's own flags were checked, not the rehearsal's tiny ones.
    assert "--batches 1,2,4,8,16,32,64" in log and "--weights random" not in log
    assert "step_backends --size 512 --style-size 256 --rounds 4 --device cuda --backends torch,onnxruntime" in log


@pytest.mark.slow
def test_rehearsal_of_the_cheap_steps(tmp_path: Path) -> None:
    proc, summary = run_lease(tmp_path, "--rehearse", "--only", "env,install,model-throughput", timeout_s=600)
    log = (tmp_path / "lease.log").read_text()
    assert proc.returncode == 0, log[-4000:]
    assert {s["step"]: s["status"] for s in summary["steps"]} == {"env": "ok", "install": "ok",
                                                                   "model-throughput": "ok"}
    data = json.loads((tmp_path / "model-gpu-throughput.json").read_text())
    rows = data["results"]
    assert {(r["size"], r["batch"], r["dtype"]) for r in rows} == {(64, 1, "fp32"), (64, 2, "fp32")}
    assert all(r["status"] == "ok" and r["x_floor"] > 0 for r in rows), rows
    assert data["flops"]["headline"]["size"] == 512  # the lease's headline FLOP count


def test_plan_refuses_a_flag_that_replaces_the_leases_value(tmp_path: Path) -> None:
    """A rehearsal size appended outside the rehearsal would make the lease itself measure at 64 px."""
    lease_args = ["bench.model", "--preset", "gpu-lease", "--device", "cpu", "--sizes", "512", "--batches", "1,64"]
    plan = tmp_path / "plan"
    plan.write_text("\t".join(["argv", *lease_args]) + "\n")
    assert lease_check.check_plan(plan) == []
    plan.write_text("\t".join(["argv", *lease_args, "--sizes", "64", "--batches=1,2"]) + "\n")
    problems = lease_check.check_plan(plan)
    assert len(problems) == 1 and "--batches, --sizes given twice" in problems[0], problems


@pytest.mark.slow
def test_rehearsal_of_the_backends_bench(tmp_path: Path) -> None:
    """The onnxruntime step times what it can without a CUDA provider, says so, and its JSON joins the report."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install .[onnx])")
    import onnxruntime

    proc, summary = run_lease(tmp_path, "--rehearse", "--only", "backends", timeout_s=600,
                              extra_env={"STYA2K_CACHE": str(tmp_path / "cache")})  # the export lands here
    log = (tmp_path / "lease.log").read_text()
    assert proc.returncode == 0, log[-4000:]
    [step] = summary["steps"]
    assert step["step"] == "backends" and step["status"] == "ok", step
    if not set(lease_check.GPU_PROVIDERS) & set(onnxruntime.get_available_providers()):
        assert step["note"].startswith(lease_check.CUDA_UNAVAILABLE), step
    bench = json.loads((tmp_path / "gpu-tests.json").read_text())["records"]["backends/s_per_image"]
    assert bench["size"] == 64 and bench["devices"]["torch"] == "cpu" and bench["devices"]["onnxruntime"] == "cpu"
    assert set(bench["devices"].values()) == {"cpu"}
    assert bench["onnxruntime_providers"][0] == "CPUExecutionProvider"
    assert all(seconds > 0 for seconds in bench["s_per_image"].values()), bench
    assert "bench/backends.py, 64 px" in report.render(tmp_path)


def test_the_gpu_tests_step_leaves_the_onnxruntime_module_to_its_own_step() -> None:
    """pytest -k as the plan check reads it: and / not over words in the node id."""
    inference = "tests/gpu/test_cuda_inference.py::test_torch_compile_on_cuda_matches_eager"
    onnx = "tests/gpu/test_cuda_onnxruntime.py::test_onnxruntime_on_the_device_matches_strict_fp32_torch"
    assert not lease_check.selects("not compile and not onnxruntime", inference)
    assert not lease_check.selects("not compile and not onnxruntime", onnx)
    assert lease_check.selects("not compile and not onnxruntime", inference.replace("compile", "other"))
    assert lease_check.selects("compile", inference) and not lease_check.selects("compile", onnx)


def test_plan_checks_the_backend_steps(tmp_path: Path) -> None:
    plan = tmp_path / "plan"
    plan.write_text("argv\tbench.backends\t--size\t512\t--rouns\t4\n"
                    "pytest\ttests/gpu/test_cuda_onnxruntime.py\ttests/model/test_no_such_module.py\n")
    problems = lease_check.check_plan(plan)
    assert any(p.startswith("bench.backends --size 512 --rouns 4: arguments do not parse") for p in problems), problems
    assert any("test paths missing: tests/model/test_no_such_module.py" in p for p in problems), problems


def test_a_record_joins_the_test_report(tmp_path: Path) -> None:
    report_path, data = tmp_path / "gpu-tests.json", tmp_path / "bench.json"
    data.write_text(json.dumps({"size": 512}))
    assert lease_check.main(["record", str(report_path), "backends/s_per_image", str(data)]) == 0  # none yet
    assert json.loads(report_path.read_text())["records"] == {"backends/s_per_image": {"size": 512}}
    report_path.write_text(json.dumps({"meta": {"gpu": "H100"}, "tests": {"t": {}}, "records": {"a": 1}}))
    lease_check.main(["record", str(report_path), "backends/s_per_image", str(data)])
    joined = json.loads(report_path.read_text())
    assert joined["meta"] == {"gpu": "H100"} and joined["tests"] == {"t": {}}
    assert joined["records"] == {"a": 1, "backends/s_per_image": {"size": 512}}


def test_the_onnxruntime_note_says_what_is_missing() -> None:
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install .[onnx])")
    from bench.backends import backend_device

    lines, note = lease_check.onnxruntime_report()
    assert f"onnxruntime {ort.__version__}" in lines[0]
    has_gpu = bool(set(lease_check.GPU_PROVIDERS) & set(ort.get_available_providers()))
    assert note.startswith(lease_check.CUDA_UNAVAILABLE) != has_gpu, note
    # The bench then times onnxruntime where it can run, beside torch on the GPU.
    assert backend_device("onnxruntime", "cuda") == ("cuda" if has_gpu else "cpu")
    assert backend_device("onnxruntime", "cpu") == "cpu" and backend_device("torch", "cuda") == "cuda"
    assert backend_device("openvino", "cuda") == "cpu"
    assert lease_check.version_tuple("1.31.1+cu130") == (1, 31, 1) > lease_check.version_tuple("1.30.0")


def test_the_box_onnx_versions_are_not_newer_than_the_project_pins() -> None:
    """The lease runs the backend on the box's onnx / onnxruntime (BOX_ONNX, checked with the backend suites)
    instead of carrying the project's pins: those must stay the newer ones, or the check says nothing."""
    import tomllib

    extra = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["onnx"]
    pins = dict(line.split("==") for line in extra)
    assert set(pins) == set(lease_check.BOX_ONNX)
    for name, version in lease_check.BOX_ONNX.items():
        assert lease_check.version_tuple(version) <= lease_check.version_tuple(pins[name]), (name, version)
    assert not set(pins) & set(lease_check.read_pins())  # not carried: the box has them


def test_a_step_not_ok_fails_the_command(tmp_path: Path) -> None:
    """The command's exit status says a step did not run through (here: skipped, the budget spent), so the
    device call's rc tells it before the summary is read."""
    proc, summary = run_lease(tmp_path, "--rehearse", "--only", "env", "--budget", "25", timeout_s=60)
    assert [(s["step"], s["status"]) for s in summary["steps"]] == [("env", "skipped")]
    assert proc.returncode == 1, proc.stdout[-2000:]


def test_unknown_argument_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(SCRIPT), "--rehaerse"], cwd=REPO_ROOT, env={**os.environ, "OUT": str(tmp_path)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown argument --rehaerse" in proc.stderr


# ------------------------------------------------------------------------------------------------ wheels
def fake_wheel(folder: Path, name: str, version: str, tag: str = "py3-none-any",
               requires: tuple[str, ...] = ()) -> Path:
    path = folder / f"{name.replace('-', '_')}-{version}-{tag}.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n"
                                                                                 for r in requires)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA", meta)
    return path


def test_wheel_check_finds_what_would_stop_the_offline_install(tmp_path: Path) -> None:
    requirements = tmp_path / "req.txt"
    requirements.write_text("# pins\nalpha==1.0\nbeta==2.0\ngamma==3.0\n")
    fake_wheel(tmp_path, "alpha", "1.0", requires=("beta>=2", "torch", "delta; python_version < '3.10'",
                                                   "epsilon; extra == 'dev'"))
    fake_wheel(tmp_path, "beta", "2.0", "cp312-cp312-manylinux_2_17_x86_64", requires=("zeta>=1",))
    fake_wheel(tmp_path, "beta", "2.0", "cp311-cp311-manylinux_2_17_x86_64")  # another python: ignored
    fake_wheel(tmp_path, "gamma", "3.0", "cp312-cp312-macosx_11_0_arm64")  # no Linux wheel
    problems = lease_check.check_wheels(tmp_path, requirements, python="3.12")
    assert any("gamma==3.0: no wheel" in p for p in problems), problems
    assert any("beta needs zeta>=1" in p for p in problems), problems
    assert not any("torch" in p or "delta" in p or "epsilon" in p for p in problems), problems  # box / markers
    fake_wheel(tmp_path, "zeta", "1.5")
    fake_wheel(tmp_path, "alpha", "1.1")
    problems = lease_check.check_wheels(tmp_path, requirements, python="3.12")
    assert any("alpha: several versions" in p for p in problems), problems
    assert any("zeta: carried but not in" in p for p in problems), problems


def test_box_tags() -> None:
    assert lease_check.box_supports([Tag("cp312", "cp312", "manylinux_2_17_x86_64")], "3.12")
    assert lease_check.box_supports([Tag("cp39", "abi3", "manylinux2014_x86_64")], "3.12")
    assert lease_check.box_supports([Tag("py3", "none", "any")], "3.12")
    assert not lease_check.box_supports([Tag("cp313", "cp313", "manylinux_2_17_x86_64")], "3.12")
    assert not lease_check.box_supports([Tag("cp312", "cp312", "manylinux_2_17_aarch64")], "3.12")


def test_project_pins_are_what_the_lease_installs() -> None:
    """requirements-lease.txt repeats pyproject's runtime pins (all but the box's own torch and pillow, and the
    video-only packages the lease does not run)."""
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = lease_check.read_pins()
    for line in project:
        name, version = line.split("==")
        if name not in lease_check.BOX_PROVIDES | lease_check.LEASE_SKIPS:
            assert str(pins.get(name.lower())) == version, (name, pins.get(name.lower()))


# ------------------------------------------------------------------------------------------------ report
def lease_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "lease"
    folder.mkdir()
    steps = [{"step": s, "status": "ok", "rc": 0, "seconds": 1.0, "timeout_s": 30.0, "note": ""} for s in STEPS]
    (folder / "summary.json").write_text(json.dumps({"mode": "lease", "budget_s": 510, "started_utc": "x",
                                                     "wall_s": 9.0, "steps": steps, "files": {}}))
    records = {"precision/float16_vs_fp32": {"mean_abs": 0.002, "p99_abs": 0.01, "max_abs": 0.05, "lpips": 0.003},
               "oom/split": {"memory_fraction": 0.01, "ooms": 2, "batch_sizes": [2] * 8, "too_large": "X"}}
    records["onnxruntime/providers"] = {"onnxruntime": "1.30.0", "onnx": "1.23.1", "gpu": [],
                                        "available": ["CPUExecutionProvider"],
                                        "on_device": "refused: CUDA provider unavailable"}
    records["backends/s_per_image"] = {
        "size": 512, "rounds": 4, "devices": {"torch": "cuda", "onnxruntime": "cpu"}, "torch_dtype": "float16",
        "onnxruntime_providers": ["CPUExecutionProvider"], "s_per_image": {"torch": 0.004, "onnxruntime": 0.5},
        "speedup_vs_torch": {"torch": 1.0, "onnxruntime": 0.008},
        "quality_vs_torch": {"onnxruntime": {"max_levels": 3.0, "mean_levels": 0.1, "p99_levels": 1.0}}}
    tests = {"tests/gpu/test_cuda_inference.py::test_a": {"outcome": "passed", "seconds": 1.5}}
    (folder / "gpu-tests.json").write_text(json.dumps({"meta": {"gpu": "NVIDIA H200", "torch": "2.11"},
                                                       "tests": tests, "records": records}))
    return folder


def test_report_renders_tests_targets_and_merges_a_rerun(tmp_path: Path) -> None:
    first = lease_folder(tmp_path)
    rerun = tmp_path / "rerun"
    rerun.mkdir()
    (rerun / "summary.json").write_text(json.dumps({"mode": "lease", "budget_s": 200, "steps": [
        {"step": "model-compile", "status": "timeout", "rc": 124, "seconds": 190.0, "timeout_s": 190.0, "note": ""},
        {"step": "env", "status": "skipped", "rc": None, "seconds": 0, "timeout_s": 0, "note": "not selected"}]}))
    merged = report.merge_folders([first, rerun], tmp_path / "merged")
    steps = {s["step"]: s["status"] for s in json.loads((merged / "summary.json").read_text())["steps"]}
    assert steps["model-compile"] == "timeout" and steps["env"] == "ok"  # a skip never hides a first result
    body = report.render(merged)
    assert "float16 vs fp32" in body and "0.51/255" in body and "0.0030" in body
    assert "2 real CUDA OOM(s)" in body and "not measured" in body  # no service / model JSON: targets unmeasured
    assert "onnxruntime 1.30.0 (onnx 1.23.1): providers CPUExecutionProvider" in body
    assert "torch on cuda (float16) 4.0 ms/image" in body
    assert "onnxruntime on cpu (no CUDA provider: onnxruntime-gpu cannot travel) (CPUExecutionProvider): 500.0" in body
    assert "0.01x torch; outputs differ by up to 3 levels of 255" in body
    doc = tmp_path / "B.md"
    doc.write_text("# Benchmarks\n\n<!-- BEGIN bench/gpu -->\nold\n<!-- END bench/gpu -->\n")
    results = tmp_path / "results"
    assert report.main([str(first), "--doc", str(doc), "--results-dir", str(results)]) == 0
    text = doc.read_text()
    assert "old" not in text and "Latest lease results" in text and text.count("BEGIN bench/gpu") == 1


@pytest.mark.parametrize("missing", ["summary.json"])
def test_report_refuses_a_folder_that_is_not_a_lease_output(tmp_path: Path, missing: str) -> None:
    assert report.main([str(tmp_path), "--print"]) == 1
