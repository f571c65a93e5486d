"""Training-step benchmark: images/s of one full step (data, encoder, A2K, decoder, both losses, backward, Adam).

Every variant gets its own trainer (same seed, same batches) and the variants take turns step by step, so a
drift in the machine's speed hits all of them alike; the report gives each variant's median s/step and its
median paired ratio to the plain step of the same round.

    python -m bench.train --sizes 128,256 --rounds 3          # CPU; pause a background training run first
    python -m bench.train --device cuda --sizes 256 --batch-size 32
    python -m bench.train --sizes 128 --variants fast --rounds 4 --profile 2   # + where the fast step's time goes

Variants (each adds one lever to the plain step, "fast" is what `training.train` picks on this machine):
plain (image folders decoded per step, two encoder calls, fp32, contiguous), pack, fused, channels_last,
bf16 (frozen VGG under bf16 autocast), fast, fast_fp32_trained (fast with the trained A2K modules and decoder
kept in float32: the lever bf16_trained on its own, paired), fast_cl_on / fast_cl_off (fast with channels_last
forced: the layout lever on its own, paired, without the start-up measurement).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench.common import (
    DOC_PATH,
    RESULTS_DIR,
    machine_info,
    machine_line,
    markdown_table,
    matmul_flops_per_s,
    parse_choice_list,
    parse_int_list,
    select_device,
    synchronize,
    update_doc_section,
    write_json,
)
from model.checkpoint import default_cache_dir
from model.hardware import has_native_bf16, start_command
from training.config import TrainConfig
from training.data import DEFAULT_CONTENT_DIRS, DEFAULT_STYLE_DIRS
from training.train import Trainer

logger = logging.getLogger(__name__)

VARIANTS = ("plain", "pack", "fused", "channels_last", "bf16", "fast", "fast_fp32_trained", "fast_cl_on",
            "fast_cl_off")
SECTION = "bench/train.py"


def variant_config(base: TrainConfig, variant: str, pack: str | None) -> TrainConfig:
    plain = replace(base, pack=None, fused_encode=False, channels_last="off", bf16="off", bf16_trained="off")
    if variant == "plain":
        return plain
    if variant == "pack":
        return replace(plain, pack=pack)
    if variant == "fused":
        return replace(plain, fused_encode=True)
    if variant == "channels_last":
        return replace(plain, channels_last="on")
    if variant == "bf16":
        return replace(plain, bf16="on")
    fast = replace(base, pack=pack, fused_encode=True, channels_last="auto", bf16="auto", bf16_trained="auto")
    if variant == "fast":
        return fast
    if variant == "fast_fp32_trained":
        return replace(fast, bf16_trained="off")
    if variant in ("fast_cl_on", "fast_cl_off"):
        # The fast step with its layout forced: pairs the two in one process where the start-up measurement
        # of `choose_levers` is too noisy to trust.
        return replace(fast, channels_last=variant.removeprefix("fast_cl_"))
    raise ValueError(variant)


def timed_step(trainer: Trainer, item: int, batch_size: int) -> tuple[float, dict[str, float]]:
    """Seconds of one synchronous step including loading its batch (no loader processes: on a 2-core
    machine their work competes with the step's threads anyway)."""
    synchronize(trainer.device)
    t0 = time.perf_counter()
    pairs = [trainer.data[item * batch_size + i] for i in range(batch_size)]
    content = torch.stack([p[0] for p in pairs])  # (B, 3, S, S)
    style = torch.stack([p[1] for p in pairs])  # (B, 3, S, S)
    values = trainer.step(content, style)
    synchronize(trainer.device)
    return time.perf_counter() - t0, values


def step_flops(trainer: Trainer, batch_size: int) -> float:
    """FLOPs of one step (forward + backward, counted by torch's FlopCounterMode: convs and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        timed_step(trainer, 10_000, batch_size)
    return float(counter.get_total_flops())


def profile_steps(trainer: Trainer, first_item: int, steps: int, batch_size: int, rows: int = 25) -> dict[str, Any]:
    """Where a step's time goes: torch.profiler over ``steps`` steps, the ops with the most self time, per step.

    Ops with the same name are summed (all shapes); ``share`` is of the profiled self time in all ops."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        seconds = [timed_step(trainer, first_item + i, batch_size)[0] for i in range(steps)]
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events) or 1.0
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:rows]
    return {
        "steps": steps, "sec_per_step": seconds, "levers": trainer.levers.describe(),
        "ops": [{"op": e.key, "calls_per_step": e.count / steps,
                 "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                 "share": e.self_cpu_time_total / total_us} for e in top],
    }


def bench_size(args: argparse.Namespace, size: int, variants: list[str], device: torch.device,
               run_root: Path) -> dict[str, Any]:
    load_size = max(args.load_size, size)
    pack = args.pack or str(default_cache_dir() / f"pack-{load_size}")
    base = TrainConfig(run_dir="", content_dirs=tuple(args.content_dirs or DEFAULT_CONTENT_DIRS),
                       style_dirs=tuple(args.style_dirs or DEFAULT_STYLE_DIRS), load_size=load_size,
                       crop_size=size, batch_size=args.batch_size, workers=0, threads=args.threads,
                       device=str(device), sample_every=0, ckpt_every=0, seed=args.seed)
    trainers: dict[str, Trainer] = {}
    for v in variants:
        cfg = replace(variant_config(base, v, pack), run_dir=str(run_root / f"{size}-{v}"))
        trainers[v] = Trainer(cfg)
    samples: dict[str, list[float]] = {v: [] for v in variants}
    losses: dict[str, list[float]] = {v: [] for v in variants}
    for round_ in range(args.warmup + args.rounds):
        for v in variants:
            seconds, values = timed_step(trainers[v], round_, args.batch_size)
            logger.info("%d px round %d %-13s %.2f s/step loss %.3f", size, round_, v, seconds, values["total"])
            if round_ >= args.warmup:
                samples[v].append(seconds)
                losses[v].append(values["total"])
    rows = {}
    for v in variants:
        med = statistics.median(samples[v])
        ratios = [p / s for p, s in zip(samples.get("plain", samples[v]), samples[v], strict=True)]
        rows[v] = {
            "sec_per_step": samples[v], "median_s": med, "images_per_s": args.batch_size / med,
            "speedup_vs_plain": statistics.median(ratios) if "plain" in samples else None,
            "levers": trainers[v].levers.describe(), "losses": losses[v],
        }
    flops = step_flops(trainers[variants[0]], args.batch_size)
    result = {"crop_size": size, "load_size": load_size, "batch_size": args.batch_size, "variants": rows,
              "step_gflop": flops / 1e9}
    if args.profile:
        name = variants[-1]  # e.g. --variants plain,fast profiles the fast step
        result["profile"] = {"variant": name, **profile_steps(trainers[name], args.warmup + args.rounds,
                                                               args.profile, args.batch_size)}
    return result


def render(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = ["## Training step (`bench/train.py`)", "", machine_line(meta), "",
             f"Process memory set-up: {meta['memory']}." if meta.get("memory") else "",
             f"Command: `{result['command']}`", "",
             "One full step (batch load, encoder, A2K, decoder, both losses, backward, Adam) per variant, the "
             "variants taking turns each round; speed-up = median of the per-round ratios plain / variant.", ""]
    peak = result.get("matmul", {}).get("flops_per_s")
    for size_result in result["sizes"]:
        gflop = size_result.get("step_gflop")
        if gflop and peak:
            floor = gflop * 1e9 / peak
            best = min(r["median_s"] for r in size_result["variants"].values())
            lines += [f"{size_result['crop_size']} px: one step is {gflop:.0f} GFLOP (convolutions and matmuls, "
                      f"FlopCounterMode); at this machine's measured fp32 matmul rate ({peak / 1e9:.0f} GFLOP/s) "
                      f"that is a floor of {floor:.2f} s/step; the fastest variant ran at {best:.2f} s "
                      f"({floor / best:.0%} of the floor's speed).", ""]
        rows = []
        for name, r in size_result["variants"].items():
            speed = "-" if r["speedup_vs_plain"] is None else f"{r['speedup_vs_plain']:.2f}x"
            rows.append([name, f"{r['median_s']:.2f}", f"{r['images_per_s']:.2f}", speed, r["levers"]])
        lines += [f"**{size_result['crop_size']} px crops, batch {size_result['batch_size']}**", "",
                  markdown_table(["variant", "s/step (median)", "images/s", "speed-up vs plain", "levers"], rows),
                  ""]
        if "profile" in size_result:
            prof = size_result["profile"]
            ops = [[o["op"], f"{o['self_ms_per_step']:.1f}", f"{o['share']:.1%}", f"{o['calls_per_step']:g}"]
                   for o in prof["ops"][:12]]
            lines += [f"Profile of the {prof['variant']} step ({prof['steps']} steps, torch.profiler, self time):",
                      "", markdown_table(["op", "ms/step", "share", "calls/step"], ops), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    # The trainer's own process set-up (huge pages, a heap that keeps freed memory), so the step is timed as
    # `training.train` runs it; GLIBC_TUNABLES= (empty) or THP_MEM_ALLOC_ENABLE=0 measure without them.
    memory = start_command(__name__)
    parser = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="128,256", help="crop sizes (comma-separated)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {', '.join(VARIANTS)}")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--load-size", type=int, default=256, help="short side before the crop (>= crop)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pack", default=None, help="data pack (default <cache>/pack-<load size>)")
    parser.add_argument("--content-dir", action="append", dest="content_dirs", metavar="DIR")
    parser.add_argument("--style-dir", action="append", dest="style_dirs", metavar="DIR")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="after the timed rounds, torch.profiler over STEPS more steps of the last variant")
    parser.add_argument("--out", default=None, help="results JSON (default bench/results/train-<device>.json)")
    parser.add_argument("--doc", type=Path, default=DOC_PATH, help="markdown file whose section to rewrite")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite the markdown file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    variants = parse_choice_list(args.variants, VARIANTS, "variants")
    sizes = parse_int_list(args.sizes)
    with tempfile.TemporaryDirectory() as tmp:
        results = [bench_size(args, s, variants, device, Path(tmp)) for s in sizes]
    meta = machine_info(device)
    meta["cpu_native_bf16"] = has_native_bf16()
    meta["memory"] = memory
    matmul = matmul_flops_per_s(device, torch.float32, 2048 if device.type == "cpu" else 8192)
    result = {"meta": meta, "command": "python -m bench.train " + " ".join(argv or sys.argv[1:]),
              "sizes": results, "matmul": matmul}
    out = Path(args.out) if args.out else RESULTS_DIR / f"train-{device.type}.json"
    write_json(out, result)
    if not args.no_doc:
        update_doc_section(args.doc, SECTION, render(result))
    logger.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
