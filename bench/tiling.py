"""Tiled inference benchmark: peak memory and time per output size, and the tiled-vs-untiled difference.

Each size runs in a fresh process (peak RSS is a process-wide high-water mark). A size whose full run would take
longer than ``--max-steps`` tile steps runs only that many: memory is bounded by one tile and reached in the
first steps of each pass (the report shows the peak after half of the steps run and after all of them, so a
growth would show), and the time of the whole image is then the measured mean per step times the number of
steps, reported as an extrapolation, never as a measurement.

    python -m bench.tiling --sizes 1024,2048,4096,8192 --max-steps 12 --accuracy-size 1024   # CPU, quiet box
    python -m bench.tiling --device cuda --sizes 2048,4096,8192
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.common import (
    DOC_PATH,
    RESULTS_DIR,
    PeakMemory,
    fmt_bytes,
    load_results,
    machine_info,
    machine_line,
    markdown_table,
    parse_int_list,
    select_device,
    synchronize,
    update_doc_section,
    write_json,
)

logger = logging.getLogger(__name__)
SECTION = "bench/tiling.py"
EVAL_CONTENT = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval" / "content"


def content_image(side: int) -> tuple[torch.Tensor, str]:
    """(1, 3, side, side): an evaluation photo resized to the side when ../shared is here, else smooth noise."""
    photos = sorted(EVAL_CONTENT.glob("*.jpg")) if EVAL_CONTENT.is_dir() else []
    if photos:
        from PIL import Image

        from model.imageio import pil_to_tensor

        with Image.open(photos[0]) as img:
            square = img.convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
        return pil_to_tensor(square)[None], f"eval photo {photos[0].name} resized"
    noise = torch.rand(1, 3, side // 16 + 1, side // 16 + 1, generator=torch.Generator().manual_seed(0))
    return F.interpolate(noise, size=(side, side), mode="bilinear", align_corners=False), "smooth noise"


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One size in this (fresh) process."""
    import model
    from model.tiling import TileConfig, TiledStylizer

    device = select_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    net = model.load_model(args.weights or model.DEFAULT_WEIGHTS, device=device).eval()
    content, source = content_image(args.worker)
    style = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1)).to(device)
    cfg = TileConfig(tile=args.tile, margin=args.margin, blend=32)
    peak = PeakMemory(device)
    peak.start()
    with torch.inference_mode():
        features = net.encode_style(style)
    tiled = TiledStylizer(net, content, [features], None, 1.0, cfg, device)
    steps = list(tiled.steps())
    half = len(tiled.tiles)  # steps[:half]: the statistics pass; steps[half:]: the transfer pass
    limit = len(steps) if args.max_steps <= 0 else min(len(steps), args.max_steps)
    n_stats = min(half, (limit + 1) // 2)  # the same share of each pass, so both kinds of step are timed
    n_render = min(half, limit - n_stats)
    # The largest tiles (interior ones: margins on every side) first, so the first transfer step meets the peak.
    order = sorted(range(half), key=lambda i: -_area(tiled.tiles[i]))
    stats_steps = [steps[i] for i in order[:n_stats]]
    render_steps = [steps[half + i] for i in order[:n_render]]
    times: dict[str, list[float]] = {"stats": [], "render": []}
    peaks: list[int] = []
    for kind, chosen in (("stats", stats_steps), ("render", render_steps)):
        if kind == "render" and n_stats < half:
            tiled.finish_statistics()  # partial run: statistics of the tiles seen so far
        for step in chosen:
            started = time.perf_counter()
            step()
            synchronize(device)
            times[kind].append(time.perf_counter() - started)
            peaks.append(peak.peak_bytes()[0])
    chosen = stats_steps + render_steps
    first_render = peaks[n_stats] if n_render else peaks[-1]  # a transfer step holds the most: the peak's level
    complete = len(chosen) == len(steps)
    row: dict[str, Any] = {
        "side": args.worker,
        "tiles": len(tiled.tiles),
        "steps_total": len(steps),
        "steps_run": len(chosen),
        "complete": complete,
        "content": source,
        "peak_bytes_first_render": first_render,
        "peak_bytes": peak.peak_bytes()[0],
        "peak_rss_bytes": peak.peak_bytes()[1],  # the process's own high-water mark: model, torch and all
        "peak_method": peak.method,
        "stats_step_s": sum(times["stats"]) / max(1, len(times["stats"])),
        "render_step_s": sum(times["render"]) / max(1, len(times["render"])),
    }
    row["seconds" if complete else "seconds_extrapolated"] = half * (row["stats_step_s"] + row["render_step_s"])
    if args.compare and complete:
        with torch.inference_mode():
            whole = net.stylize_from_features(content.to(device), [features]).float().cpu()
        if args.sample:
            save_seam_sample(Path(args.sample), whole, tiled.result(), cfg.tile)
        diff = (tiled.result() - whole).abs().flatten() * 255
        row["diff_mean_255"] = float(diff.mean())
        row["diff_p99_255"] = float(diff.quantile(0.99)) if diff.numel() <= 16_000_000 else None
        row["diff_max_255"] = float(diff.max())
    return row


def save_seam_sample(path: Path, whole: torch.Tensor, tiled: torch.Tensor, tile: int, side: int = 256) -> None:
    """Untiled | tiled | |difference| x 16 around the corner where four tiles meet (where a seam would show)."""
    from model.imageio import tensor_to_pil

    top = max(0, min(tile - side // 2, whole.shape[2] - side))
    left = max(0, min(tile - side // 2, whole.shape[3] - side))
    crops = [x[0, :, top : top + side, left : left + side] for x in (whole, tiled)]
    diff = ((crops[0] - crops[1]).abs() * 16).clamp(0, 1)
    tensor_to_pil(torch.cat([crops[0], crops[1], diff], dim=2)).save(path, quality=90)


def _area(tile: Any) -> int:
    return (tile.rows.hi - tile.rows.lo) * (tile.cols.hi - tile.cols.lo)


def run_size(args: argparse.Namespace, side: int, compare: bool) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.tiling", "--worker", str(side), "--device", args.device,
               "--tile", str(args.tile), "--margin", str(args.margin),
               "--max-steps", "0" if compare else str(args.max_steps),
               "--threads", str(args.threads)]
    if args.weights:
        command += ["--weights", args.weights]
    if compare:
        command.append("--compare")
        if args.sample:
            command += ["--sample", str(args.sample)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"size {side} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def render_section(runs: list[tuple[Path, dict[str, Any]]]) -> str:
    """Every stored run (bench/results/tiling-*.json: this machine's, a GPU lease's), newest device first."""
    return "\n".join(render(result) for _, result in runs)


def render(result: dict[str, Any]) -> str:
    meta = result["meta"]
    rows = []
    for row in result["rows"]:
        seconds = row.get("seconds")
        time_text = (f"{seconds:.0f} s" if seconds is not None
                     else f"~{row['seconds_extrapolated']:.0f} s (extrapolated)")
        diff = (f"{row['diff_mean_255']:.3f} / {row['diff_p99_255']:.2f}" if row.get("diff_mean_255") is not None
                else "")
        rows.append([
            f"{row['side']}x{row['side']}", row["tiles"], f"{row['steps_run']} of {row['steps_total']}",
            fmt_bytes(row["peak_bytes_first_render"]), fmt_bytes(row["peak_bytes"]),
            fmt_bytes(row["peak_rss_bytes"]) if "peak_rss_bytes" in row else "", f"{row['stats_step_s']:.2f}",
            f"{row['render_step_s']:.2f}", time_text, diff,
        ])
    table = markdown_table(
        ["output", "tiles", "steps run", "peak after 1st transfer step", "peak after all", "process peak",
         "s / stats step", "s / render step", "whole image", "tiled vs untiled: mean / p99 (of 255)"],
        rows,
    )
    return (
        f"### Tiled inference (large images), {meta['device']}\n\n{machine_line(meta)}; tile {meta['tile']} px, margin "
        f"{meta['margin']} px, device {meta['device']}, threads {meta['threads']}; "
        f"content: {result['rows'][0]['content']}.\n"
        f"Command: `{meta['command']}`.\n\n{table}\n\n"
        "Peak = resident memory above the process's baseline after loading the model (CPU) or allocated tensor bytes "
        "(CUDA); process peak = the whole process's high-water mark (CPU: VmHWM, the model and torch included; CUDA: "
        "allocated bytes). The largest tiles run first, so the first transfer step meets the peak; the second peak "
        "column shows whether later steps raised it. A row with fewer steps run than total ran that many steps of both "
        "passes (its statistics come from the tiles seen); its whole-image time is the measured mean per step "
        "times the number of steps.\n"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1024,2048,4096", help="output sides, comma-separated")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--margin", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--weights", default=None, help="weights file; default: the shipped weights")
    parser.add_argument("--max-steps", type=int, default=0, help="run at most this many tile steps per size (0: all)")
    parser.add_argument("--accuracy-size", type=int, default=0, help="also run this size untiled and compare")
    parser.add_argument("--sample", type=Path, default=None,
                        help="with --accuracy-size: save untiled | tiled | diff x16 around a tile corner (JPEG)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results JSON (default bench/results/tiling-<device>.json)")
    parser.add_argument("--doc", type=Path, default=DOC_PATH)
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--compare", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        sys.stdout.write(json.dumps(worker(args)) + "\n")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    sizes = parse_int_list(args.sizes)
    rows = []
    for side in ([args.accuracy_size] if args.accuracy_size else []) + sizes:
        logger.info("size %d", side)
        rows.append(run_size(args, side, compare=side == args.accuracy_size))
        logger.info("%s", rows[-1])
    meta = {**machine_info(select_device(args.device)), "tile": args.tile, "margin": args.margin,
            "device": args.device, "threads": args.threads or torch.get_num_threads(),
            "command": "python -m bench.tiling " + " ".join(argv if argv is not None else sys.argv[1:])}
    result = {"meta": meta, "rows": rows}
    out = args.out or RESULTS_DIR / f"tiling-{args.device.split(':')[0]}.json"
    write_json(out, result)
    if not args.no_doc:
        runs = load_results("tiling", out.parent) if out.parent == RESULTS_DIR else [(out, result)]
        update_doc_section(args.doc, SECTION, render_section(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
