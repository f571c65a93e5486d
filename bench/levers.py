"""CPU serving levers, each paired with float32 in one run: speed ratio and output difference vs exact float32.

    python -m bench.levers --preset cpu                       # the shipped weights at 512 px (bf16 at 128 px)
    python -m bench.levers --preset smoke --out /tmp/l.json --doc /tmp/B.md   # seconds; used by tests/bench

Every lever runs in its own fresh process (``--worker``) so process-wide switches (OpenMP wait policy, thread
count) really differ, and the float32 reference runs in a process of its own right before it (pairs, alternated
``--repeats`` times), so both sides of a ratio see the same machine load. Levers:

  channels_last   weights and input in NHWC memory format
  bf16            torch.autocast(bfloat16)  (own, smaller size: emulated on CPUs without native bf16)
  bf16_cl         bf16 + channels_last
  threads1        torch.set_num_threads(1) instead of torch's default
  omp_passive     OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning
  batch2          two images per call (time per image)
  compile         torch.compile of the transfer (its compile time reported separately)
  huge_pages      THP_MEM_ALLOC_ENABLE=1: tensors of >= 2 MiB on transparent huge pages (the float32
                  reference runs with it off, =0)
  bf16_cl_thp     bf16 + channels_last + huge pages: what the service runs on a CPU with native bf16
  heap            glibc keeps freed memory (model.hardware.keep_freed_memory: blocks up to 32 MiB from the heap,
                  trimmed only past 2 GiB free) instead of returning it to the kernel after every call
  bf16_cl_thp_heap  bf16 + channels_last + huge pages + heap

Difference vs float32 (same content, same cached style): mean / p99 / max absolute difference of the uint8
outputs (0..255), and LPIPS (model/lpips.py, weights in ../shared/weights/lpips; skipped without them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench import common

SECTION = "bench/levers.py"
LEVERS = ("channels_last", "bf16", "bf16_cl", "threads1", "omp_passive", "batch2", "compile", "huge_pages",
          "bf16_cl_thp", "heap", "bf16_cl_thp_heap")
LPIPS_DIR = common.REPO_ROOT.parent / "shared" / "weights" / "lpips"

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"size": 512, "bf16_size": 128, "levers": ",".join(lv for lv in LEVERS if lv != "compile"),
            "repeats": 2, "iters": 2, "weights": "default", "timeout_s": 900.0},
    "smoke": {"size": 64, "bf16_size": 32, "levers": "channels_last,threads1,omp_passive,batch2", "repeats": 1,
              "iters": 1, "weights": "random", "timeout_s": 300.0},
}


# ------------------------------------------------------------------------------------------------ worker
def lever_setup(lever: str) -> dict[str, Any]:
    """What a lever changes: env of the worker process and options of the call."""
    env = {"THP_MEM_ALLOC_ENABLE": "1" if lever in ("huge_pages", "bf16_cl_thp", "bf16_cl_thp_heap") else "0"}
    return {
        "env": env | ({"OMP_WAIT_POLICY": "PASSIVE"} if lever == "omp_passive" else {}),
        "dtype": "bf16" if lever in ("bf16", "bf16_cl", "bf16_cl_thp", "bf16_cl_thp_heap") else "fp32",
        "channels_last": lever in ("channels_last", "bf16_cl", "bf16_cl_thp", "bf16_cl_thp_heap"),
        "keep_heap": lever in ("heap", "bf16_cl_thp_heap"),
        "threads": 1 if lever == "threads1" else 0,
        "batch": 2 if lever == "batch2" else 1,
        "compile": lever == "compile",
    }


def worker(payload: dict[str, Any]) -> dict[str, Any]:
    """Time ``iters`` calls (after one warm call) of one setup; save the first image's uint8 output."""
    import model
    from model.imageio import quantize

    setup = payload["setup"]
    if setup.get("keep_heap"):
        from model.hardware import keep_freed_memory

        keep_freed_memory()
    if setup["threads"]:
        torch.set_num_threads(setup["threads"])
    weights = payload["weights"]
    if weights == "random":
        torch.manual_seed(0)
        net = model.StyA2K(model.ModelConfig())
    else:
        net = model.load_model(None if weights == "default" else weights, device="cpu")
    net = net.eval().requires_grad_(False)
    size, batch = payload["size"], setup["batch"]
    generator = torch.Generator().manual_seed(1)
    content = torch.rand(1, 3, size, size, generator=generator).expand(batch, -1, -1, -1).contiguous()
    style = torch.rand(1, 3, 256, 256, generator=generator)  # (1, 3, 256, 256)
    if setup["channels_last"]:
        net = net.to(memory_format=torch.channels_last)
        content = content.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        features = net.encode_style(style)
        styles = [model.StyleFeatures.cat([features] * batch)] if batch > 1 else [features]
    transfer = net.stylize_from_features
    compile_s = None
    if setup["compile"]:
        transfer = torch.compile(net.stylize_from_features, dynamic=False)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if setup["dtype"] == "bf16" else None

    def call() -> torch.Tensor:
        with torch.inference_mode():
            if autocast is None:
                return transfer(content, styles, None, 1.0)
            with autocast:
                return transfer(content, styles, None, 1.0)

    started = time.perf_counter()
    output = call()
    first_s = time.perf_counter() - started
    if setup["compile"]:
        compile_s = first_s
    times = []
    for _ in range(payload["iters"]):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    pixels = quantize(output[0].float().contiguous())  # (3, H, W) uint8
    torch.save(pixels, payload["output"])
    return {"first_s": first_s, "times_s": times, "s_per_image": min(times) / batch, "compile_s": compile_s,
            "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "huge_pages": os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"}


def run_worker(setup: dict[str, Any], size: int, args: argparse.Namespace, output: Path) -> dict[str, Any]:
    payload = {"setup": setup, "size": size, "weights": args.weights, "iters": args.iters, "output": str(output)}
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "THP_MEM_ALLOC_ENABLE")} | setup["env"]
    done = subprocess.run([sys.executable, "-m", "bench.levers", "--worker", json.dumps(payload)],
                          cwd=common.REPO_ROOT, env=env, capture_output=True, text=True, timeout=args.timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"worker failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ difference
def difference(reference: Path, other: Path, lpips: Any) -> dict[str, Any]:
    a, b = torch.load(reference), torch.load(other)  # (3, H, W) uint8 each
    diff = (a.float() - b.float()).abs().flatten()
    sample = diff[:: max(1, diff.numel() // 4_000_000)]  # torch.quantile takes at most 16M values
    out = {"mean_abs": diff.mean().item(), "p99_abs": torch.quantile(sample, 0.99).item(), "max_abs": diff.max().item()}
    out["lpips"] = float(lpips(a[None].float() / 255, b[None].float() / 255)[0]) if lpips is not None else None
    return out


def load_lpips() -> Any:
    if not LPIPS_DIR.is_dir():
        log(f"LPIPS skipped: no weights at {LPIPS_DIR}")
        return None
    from model.lpips import LPIPS

    return LPIPS.from_folder(LPIPS_DIR)


# ------------------------------------------------------------------------------------------------ driver
def run(args: argparse.Namespace) -> dict[str, Any]:
    lpips = load_lpips()
    baseline = lever_setup("fp32")
    result: dict[str, Any] = {"meta": common.machine_info(torch.device("cpu")), "command": command_line(),
                              "settings": vars(args) | {"out": str(args.out), "doc": str(args.doc)},
                              "lpips": lpips is not None, "levers": []}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-levers-") as tmp:
        for lever in args.levers:
            size = args.bf16_size if lever.startswith("bf16") else args.size
            pairs = []
            for repeat in range(args.repeats):
                ref_out, lever_out = Path(tmp) / f"fp32-{size}.pt", Path(tmp) / f"{lever}-{repeat}.pt"
                order = (("fp32", baseline, ref_out), (lever, lever_setup(lever), lever_out))
                timed = {}
                for name, setup, out in order if repeat % 2 == 0 else order[::-1]:
                    timed[name] = run_worker(setup, size, args, out)
                pairs.append({"fp32": timed["fp32"], "lever": timed[lever],
                              "speedup": timed["fp32"]["s_per_image"] / timed[lever]["s_per_image"]})
                log(f"{lever} @ {size}: fp32 {timed['fp32']['s_per_image']:.2f} s/img, "
                    f"{lever} {timed[lever]['s_per_image']:.2f} s/img -> {pairs[-1]['speedup']:.2f}x")
            row = {"lever": lever, "size": size, "pairs": pairs,
                   "speedup": common.percentile([p["speedup"] for p in pairs], 50),
                   "difference": difference(ref_out, lever_out, lpips)}
            if lever == "compile":
                row["compile_s"] = pairs[-1]["lever"]["compile_s"]
            result["levers"].append(row)
    result["wall_s"] = time.monotonic() - started
    return result


def command_line() -> str:
    return "python -m bench.levers " + " ".join(a for a in sys.argv[1:])


def log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


# ------------------------------------------------------------------------------------------------ report
def render_section(runs: list[tuple[Path, dict[str, Any]]]) -> str:
    parts = ["## CPU serving levers (`bench/levers.py`)", "",
             "Each lever against exact float32 of the same shipped network, content and cached 256 px style; every "
             "side in a fresh process, float32 and lever alternated per pair so both see the same load. "
             "`speedup` = float32 time per image / lever time per image (median over pairs, > 1 = faster). "
             "Difference = the lever's uint8 output vs float32's (0..255) and LPIPS (lower = closer).", ""]
    for path, data in runs:
        s = data["settings"]
        parts += [f"### `{path.name}`", "", f"- Machine: {common.machine_line(data['meta'])}",
                  f"- Command: `{data['command']}` (wall {data.get('wall_s', 0) / 60:.1f} min); {s['repeats']} pairs "
                  f"per lever, best of {s['iters']} calls after a warm one; weights {s['weights']}.", ""]
        rows = []
        for row in data["levers"]:
            d = row["difference"]
            speeds = ", ".join(f"{p['fp32']['s_per_image']:.2f}/{p['lever']['s_per_image']:.2f}" for p in row["pairs"])
            rows.append([row["lever"], row["size"], f"**{row['speedup']:.2f}x**", speeds, f"{d['mean_abs']:.3f}",
                         f"{d['p99_abs']:.1f}", f"{d['max_abs']:.0f}",
                         f"{d['lpips']:.4f}" if d["lpips"] is not None else "skipped (no weights)",
                         common.fmt_seconds(row.get("compile_s")) if row["lever"] == "compile" else ""])
        parts += [common.markdown_table(["lever", "size", "speedup", "s/img fp32/lever per pair", "mean abs",
                                         "p99 abs", "max abs", "LPIPS", "compile"], rows), ""]
    return "\n".join(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--levers", help=f"comma-separated subset of {','.join(LEVERS)}")
    parser.add_argument("--size", type=int, help="content side")
    parser.add_argument("--bf16-size", type=int, help="content side of the bf16 levers")
    parser.add_argument("--repeats", type=int, help="fp32/lever pairs per lever")
    parser.add_argument("--iters", type=int, help="timed calls per process (after one warm call)")
    parser.add_argument("--weights", help="default | random | checkpoint path")
    parser.add_argument("--timeout-s", type=float, help="wall limit of one worker process")
    parser.add_argument("--out", type=Path, default=common.RESULTS_DIR / "levers-cpu.json")
    parser.add_argument("--doc", type=Path, default=common.DOC_PATH)
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name, value in PRESETS[args.preset].items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    args.levers = common.parse_choice_list(args.levers, LEVERS, "lever") if isinstance(args.levers, str) \
        else args.levers
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        sys.stdout.write(json.dumps(worker(json.loads(args.worker))) + "\n")
        return
    result = run(args)
    common.write_json(args.out, result)
    log(f"wrote {args.out}")
    if not args.no_doc:
        runs = common.load_results("levers", args.out.parent)
        if args.out.parent != common.RESULTS_DIR or not any(p == args.out for p, _ in runs):
            runs = [(args.out, result)]
        common.update_doc_section(args.doc, SECTION, render_section(runs))
        log(f"updated {args.doc}")


if __name__ == "__main__":
    main()
