"""Turn what one GPU lease wrote (bench/gpu/inference_lease.sh -> $OUT) into docs/BENCHMARKS.md.

    python -m bench.gpu.report /work/.device/<files_at>        # copy the JSON into bench/results, rewrite docs
    python -m bench.gpu.report out/lease-rehearse --print      # preview the lease section only, write nothing

It (1) copies the model / service JSON into bench/results/ as model-gpu-lease-*.json and
service-gpu-lease.json, (2) lets bench/model.py and bench/service.py rewrite their own sections from every
result there (their GPU target lines then fill in), and (3) rewrites the ``bench/gpu`` section: the lease's
steps, the CUDA test figures (precision, transfers, OOM split, compile) and the three targets of issue 14.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import common

SECTION = "bench/gpu"
# lease output name -> name under bench/results (the prefixes are what bench/model.py / service.py load)
RESULT_FILES = {
    "model-gpu-throughput.json": "model-gpu-lease-throughput.json",
    "model-gpu-memory.json": "model-gpu-lease-memory.json",
    "model-gpu-compile.json": "model-gpu-lease-compile.json",
    "service-gpu.json": "service-gpu-lease.json",
    "tiling-gpu.json": "tiling-gpu-lease.json",
}
THROUGHPUT_TARGET = 300.0  # img/s at 512x512 through HTTP
P99_TARGET_MS = 50.0  # at concurrency 16
FLOOR_TARGET = 2.0  # model alone, time / FLOP floor


def load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / name
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def levels(service: dict[str, Any] | None, label: str = "batched") -> dict[int, dict[str, Any]]:
    if not service:
        return {}
    return {lvl["concurrency"]: lvl for s in service["servers"] if s["label"] == label for lvl in s["levels"]}


def targets(folder: Path) -> list[list[str]]:
    """[target, status] rows for the three figures issue 14 reports against."""
    service = load(folder, "service-gpu.json")
    on_gpu = bool(service and service["meta"].get("gpu"))
    batched = levels(service)
    best = max((lvl["throughput_rps"] or 0 for lvl in batched.values()), default=0.0)
    c16 = batched.get(16)
    rows = []
    where = "" if on_gpu else " (not a GPU run)"
    if batched and service and service["settings"]["size"] == 512:
        conc = max(batched, key=lambda c: batched[c]["throughput_rps"] or 0)
        rows.append([f">= {THROUGHPUT_TARGET:.0f} img/s at 512x512 through HTTP",
                     f"{'MET' if best >= THROUGHPUT_TARGET else 'NOT MET'}: {best:.0f} img/s (concurrency {conc})"
                     + where])
    else:
        rows.append([f">= {THROUGHPUT_TARGET:.0f} img/s at 512x512 through HTTP", "not measured"])
    if c16 and c16["p99_ms"] is not None and service and service["settings"]["size"] == 512:
        rows.append([f"p99 <= {P99_TARGET_MS:.0f} ms at concurrency 16",
                     f"{'MET' if c16['p99_ms'] <= P99_TARGET_MS else 'NOT MET'}: {c16['p99_ms']:.1f} ms" + where])
    else:
        rows.append([f"p99 <= {P99_TARGET_MS:.0f} ms at concurrency 16", "not measured"])
    model_rows = [(r, d) for name in ("model-gpu-throughput.json", "model-gpu-compile.json")
                  if (d := load(folder, name)) for r in d["results"]
                  if r.get("status") == "ok" and r["size"] == 512 and r["arch"] == "a2k" and r["cached"]
                  and "x_floor" in r]
    if model_rows:
        row, data = min(model_rows, key=lambda rd: rd[0]["x_floor"])
        rows.append([f"model alone within {FLOOR_TARGET:.0f}x of the FLOP floor (512 px)",
                     f"{'MET' if row['x_floor'] <= FLOOR_TARGET else 'NOT MET'}: {row['x_floor']:.2f}x "
                     f"({row['images_per_s']:.0f} img/s, batch {row['batch']} {row['dtype']} {row['mode']})"
                     + ("" if data["meta"].get("gpu") else " (not a GPU run)")])
    else:
        rows.append([f"model alone within {FLOOR_TARGET:.0f}x of the FLOP floor (512 px)", "not measured"])
    return rows


def levels_255(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f} ({x * 255:.2f}/255)"


def test_lines(report: dict[str, Any] | None) -> list[str]:
    if not report:
        return ["No CUDA test report (gpu-tests.json) in this lease's output.", ""]
    meta = report.get("meta", {})
    lines = [f"CUDA tests (`tests/gpu`, marker `gpu`) on {meta.get('gpu') or 'CPU (rehearsal)'}, torch "
             f"{meta.get('torch')}, CUDA {meta.get('cuda')}:", ""]
    rows = [[nodeid.split("::", 1)[-1], t["outcome"], f"{t['seconds']:.1f} s", t.get("reason", "")]
            for nodeid, t in report["tests"].items()]
    lines += [common.markdown_table(["test", "outcome", "time", "note"], rows), ""]
    records = report.get("records", {})
    precision = [[name.split("/", 1)[1].replace("_", " "), levels_255(r["mean_abs"]), levels_255(r["p99_abs"]),
                  levels_255(r["max_abs"]), "-" if r.get("lpips") is None else f"{r['lpips']:.4f}"]
                 for name, r in records.items() if name.startswith("precision/")]
    if precision:
        lines += ["Output difference against strict fp32 (TF32 off), uint8 outputs of the engine on [0, 1]:", "",
                  common.markdown_table(["pair", "mean abs", "p99 abs", "max abs", "LPIPS"], precision), ""]
    transfers = records.get("transfers/cuda_vs_cpu_fp32")
    if transfers:
        worst = max((v["max_abs"] for k, v in transfers.items() if isinstance(v, dict)), default=0.0)
        lines.append(f"- CUDA (pinned buffers, channels_last, padded batch of two) vs CPU, strict fp32: worst "
                     f"max abs difference {worst * 255:.1f}/255.")
    oom = records.get("oom/split")
    if oom:
        lines.append(f"- OOM split: allocator capped at {oom.get('memory_fraction') or 0:.4f} of the GPU; "
                     f"{oom.get('ooms', '?')} real CUDA OOM(s); the batch of 8 ran as batch sizes "
                     f"{oom.get('batch_sizes')}; a 2x-side request alone: `{oom.get('too_large', '-')}`.")
    compiled = records.get("compile/vs_eager")
    if compiled:
        lines.append(f"- torch.compile ({compiled['dtype']}, {compiled['size'][0]}x{compiled['size'][1]}): load + "
                     f"warm-up compile {compiled['load_and_compile_s']:.0f} s; vs eager mean abs "
                     f"{compiled['mean_abs'] * 255:.2f}/255, max {compiled['max_abs'] * 255:.1f}/255.")
    return [*lines, *onnxruntime_lines(records), ""]


def onnxruntime_lines(records: dict[str, Any]) -> list[str]:
    """The onnxruntime backend's records (tests/gpu/test_cuda_onnxruntime.py, the backends step's bench)."""
    lines = []
    providers = records.get("onnxruntime/providers")
    if providers:
        on_device = providers.get("on_device", "not run")
        lines.append(f"- onnxruntime {providers['onnxruntime']} (onnx {providers['onnx']}): providers "
                     f"{', '.join(providers['available'])}; STYA2K_BACKEND=onnxruntime on the device: "
                     f"{', '.join(on_device) if isinstance(on_device, list) else on_device}.")
    compared = records.get("onnxruntime/vs_torch_fp32")
    if compared:
        items = [v for k, v in compared.items() if k.startswith("item")]
        lines.append(f"- onnxruntime ({compared['providers'][0]}) vs torch strict fp32 on {compared['device']}, a "
                     f"padded batch of two: worst mean abs {max(i['mean_abs'] for i in items) * 255:.2f}/255, "
                     f"max abs {max(i['max_abs'] for i in items) * 255:.1f}/255.")
    bench = records.get("backends/s_per_image")
    if bench:
        devices, seconds = bench["devices"], bench["s_per_image"]
        lines.append(f"- bench/backends.py, {bench['size']} px, median of {bench['rounds']} rounds: torch on "
                     f"{devices['torch']} ({bench['torch_dtype']}) {seconds['torch'] * 1000:.1f} ms/image.")
        providers = bench.get("onnxruntime_providers") or ["none"]
        for name in (n for n in seconds if n != "torch"):
            fallback = (" (no CUDA provider: onnxruntime-gpu cannot travel)"
                        if name.startswith("onnxruntime") and devices[name] != devices["torch"] else "")
            provider = f" ({providers[0]})" if name.startswith("onnxruntime") else ""
            quality = bench["quality_vs_torch"].get(name, {})
            lines.append(f"  - {name} on {devices[name]}{fallback}{provider}: {seconds[name] * 1000:.1f} ms/image, "
                         f"{bench['speedup_vs_torch'][name]:.2f}x torch; outputs differ by up to "
                         f"{quality.get('max_levels', float('nan')):.0f} levels of 255 (mean "
                         f"{quality.get('mean_levels', float('nan')):.2f}).")
    return lines


def render(folder: Path) -> str:
    summary = load(folder, "summary.json") or {}
    lines = ["### Latest lease results", ""]
    if summary:
        lines += [f"Run {summary.get('started_utc')} (mode {summary.get('mode')}, budget {summary.get('budget_s')} s, "
                  f"wall {summary.get('wall_s')} s):", "",
                  common.markdown_table(["step", "status", "time", "timeout"],
                                        [[s["step"], s["status"] + (f" ({s['note']})" if s["note"] else ""),
                                          f"{s['seconds']:.0f} s", f"{s['timeout_s']:.0f} s"]
                                         for s in summary.get("steps", [])]), ""]
    service = load(folder, "service-gpu.json")
    if service:
        lines += [f"- Machine: {common.machine_line(service['meta'])}", ""]
    partial = [name for name in RESULT_FILES if (load(folder, name) or {}).get("partial")]
    if partial:
        lines += [f"- **Partial** (the step was stopped at its timeout; rows so far kept): {', '.join(partial)}", ""]
    lines += ["Targets:", "", common.markdown_table(["target", "status"], targets(folder)), ""]
    lines += test_lines(load(folder, "gpu-tests.json"))
    lines.append("Full tables: the `bench/model.py` and `bench/service.py` sections (files `*-gpu-lease*.json`).")
    return "\n".join(lines)


def merge_folders(folders: list[Path], into: Path) -> Path:
    """Several calls' outputs (a first lease, then an --only rerun) as one folder: later files win, except
    that the steps of summary.json and the tests / records of gpu-tests.json add up."""
    into.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    tests: dict[str, Any] = {}
    for folder in folders:
        for path in sorted(folder.glob("*.json")):
            data = load(folder, path.name)
            if path.name == "summary.json" and data:
                steps = {step["step"]: step for step in summary.get("steps", [])}
                for step in data["steps"]:  # a rerun's result replaces the first one, a skip does not
                    if step["status"] != "skipped" or step["step"] not in steps:
                        steps[step["step"]] = step
                summary = {**summary, **data, "steps": list(steps.values())}
            elif path.name == "gpu-tests.json" and data:
                merged_tests = {**tests.get("tests", {}), **data.get("tests", {})}
                merged_records = {**tests.get("records", {}), **data.get("records", {})}
                tests = {**tests, **data, "tests": merged_tests, "records": merged_records}
            else:
                shutil.copyfile(path, into / path.name)
    if summary:
        common.write_json(into / "summary.json", summary)
    if tests:
        common.write_json(into / "gpu-tests.json", tests)
    return into


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", type=Path, nargs="+",
                        help="what the lease wrote under $OUT (the run's files_at); several (a first run, then an "
                             "--only rerun) are merged in order")
    parser.add_argument("--results-dir", type=Path, default=common.RESULTS_DIR)
    parser.add_argument("--doc", type=Path, default=common.DOC_PATH)
    parser.add_argument("--print", action="store_true", help="print the lease section; copy and write nothing")
    args = parser.parse_args(argv)
    for folder in args.folders:
        if not (folder / "summary.json").is_file():
            sys.stderr.write(f"{folder} holds no summary.json: not the output of bench/gpu/inference_lease.sh\n")
            return 1
    with tempfile.TemporaryDirectory(prefix="lease-report-") as tmp:
        args.folder = merge_folders(args.folders, Path(tmp)) if len(args.folders) > 1 else args.folders[0]
        return write_report(args)


def write_report(args: argparse.Namespace) -> int:
    body = render(args.folder)
    if args.print:
        sys.stdout.write(body + "\n")
        return 0
    from bench import model as bench_model
    from bench import service as bench_service

    args.results_dir.mkdir(parents=True, exist_ok=True)
    for source, target in RESULT_FILES.items():
        if (args.folder / source).is_file():
            shutil.copyfile(args.folder / source, args.results_dir / target)
    model_runs = common.load_results("model", args.results_dir)
    if model_runs:
        common.update_doc_section(args.doc, bench_model.SECTION, bench_model.render_section(model_runs))
    service_runs = common.load_results("service", args.results_dir)
    if service_runs:
        common.update_doc_section(args.doc, bench_service.SECTION, bench_service.render_section(service_runs))
    tiling_runs = common.load_results("tiling", args.results_dir)
    if tiling_runs:
        from bench import tiling as bench_tiling

        common.update_doc_section(args.doc, bench_tiling.SECTION, bench_tiling.render_section(tiling_runs))
    common.update_doc_section(args.doc, SECTION, body)
    sys.stderr.write(f"updated {args.doc} and {args.results_dir}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
