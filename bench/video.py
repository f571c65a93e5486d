"""Video (issue 20): temporal stability of frame-by-frame stylization, without and with `TemporalSmoother`.

For each clip of ``--video-dir`` (folders of frames, ``../shared/data/video``) and each of ``--styles`` styles (the
first of the quality harness's fixed-seed style selection), at a ``--size`` px short side (the harness's
``video_size``, 256), with the shipped default weights:
- warping error (``model.temporal.warping_error``, the harness's Table 3 measure) of the content itself, of our
  outputs, and of our outputs smoothed at each ``--strengths``; it uses the same DIS flow as the smoother, so it
  flatters it: hence also
- static flicker (``model.temporal.static_flicker``): mean |out_t - out_{t-1}| over the pixels whose content
  changed by less than 2/255, no optical flow involved;
- change vs unsmoothed: mean |smoothed - unsmoothed| (of 255), and the sharpness ratio (mean absolute image
  gradient, smoothed / unsmoothed): how much the smoothing alters (or blurs) the stylization;
- seconds per frame of the stylization (style features cached, as the service does) and added by smoothing.

    python -m bench.video --frames 30 --threads 2      # CPU: pause other CPU users while it runs
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench.common import (
    DOC_PATH,
    RESULTS_DIR,
    machine_info,
    machine_line,
    markdown_table,
    select_device,
    update_doc_section,
    write_json,
)

logger = logging.getLogger(__name__)
SECTION = "bench/video.py"
SHARED = Path(__file__).resolve().parents[2] / "shared"


def sharpness(image: Tensor) -> float:
    """Mean absolute horizontal + vertical difference of a (3, H, W) image: falls when an image is blurred."""
    return float((image[:, :, 1:] - image[:, :, :-1]).abs().mean() + (image[:, 1:] - image[:, :-1]).abs().mean())


def variant_metrics(outputs: list[Tensor], frames: list[Tensor], flows: list[Any],
                    reference: list[Tensor] | None) -> dict[str, float]:
    from model.temporal import static_flicker, warping_error

    flicker, _ = static_flicker(outputs, frames)
    row = {"warping_error": warping_error(outputs, flows), "static_flicker_255": flicker * 255}
    if reference is not None:
        row["change_255"] = statistics.fmean(float((o - r).abs().mean()) * 255 for o, r in zip(outputs, reference,
                                                                                                 strict=True))
        row["sharpness_ratio"] = statistics.fmean(sharpness(o) / max(sharpness(r), 1e-12)
                                                  for o, r in zip(outputs, reference, strict=True))
    return row


def run_clip(net: torch.nn.Module, clip: Path, styles: list[tuple[str, Any]], args: argparse.Namespace,
             strengths: list[float]) -> dict[str, Any]:
    from model.temporal import TemporalSmoother, flow_with_occlusion, static_flicker, warping_error
    from training.data import list_images
    from training.evaluate import load_at

    files = list_images([clip])[: args.frames]
    frames = [load_at(f, args.size)[0] for f in files]  # each (3, H, W) in [0, 1]
    flows = [flow_with_occlusion(frames[t], frames[t + 1]) for t in range(len(frames) - 1)]  # forward t -> t+1
    content_flicker, static_share = static_flicker(frames, frames)
    result: dict[str, Any] = {
        "clip": clip.name, "frames": len(frames), "height": frames[0].shape[1], "width": frames[0].shape[2],
        "input_warping_error": warping_error(frames, flows),
        "valid_fraction": statistics.fmean(float(p.valid.float().mean()) for p in flows),
        "static_fraction": static_share, "input_static_flicker_255": content_flicker * 255, "styles": {},
    }
    for style_name, features in styles:
        stylized, seconds = [], []
        with torch.inference_mode():
            for frame in frames:
                started = time.perf_counter()
                stylized.append(net.stylize_from_features(frame[None], [features])[0].float())  # (3, H, W)
                seconds.append(time.perf_counter() - started)
        # Medians: the 2 cores are shared, and a few frames caught other work (up to 7x the typical step).
        per_style: dict[str, Any] = {"stylize_s_per_frame": statistics.median(seconds),
                                     "stylize_s_mean": statistics.fmean(seconds),
                                     "stylize_s_samples": [round(x, 4) for x in seconds],
                                     "none": variant_metrics(stylized, frames, flows, None), "smoothed": {}}
        for strength in strengths:
            smoother = TemporalSmoother(strength)
            outputs, step_s, trusted, cuts = [], [], [], 0
            for frame, out in zip(frames, stylized, strict=True):
                started = time.perf_counter()
                outputs.append(smoother.step(frame, out))
                step_s.append(time.perf_counter() - started)
                if smoother.last_trusted_fraction is not None:
                    trusted.append(smoother.last_trusted_fraction)
                cuts += smoother.last_cut
            row = variant_metrics(outputs, frames, flows, stylized)
            # The first step only stores the frame: the per-frame cost is that of the frames that blend.
            row.update(smooth_s_per_frame=statistics.median(step_s[1:]), smooth_s_mean=statistics.fmean(step_s[1:]),
                       smooth_s_samples=[round(x, 4) for x in step_s[1:]], trusted_fraction=statistics.fmean(trusted),
                       cuts=cuts)
            per_style["smoothed"][f"{strength:g}"] = row
        result["styles"][style_name] = per_style
        logger.info("%s / %s: %s", clip.name, style_name,
                    {k: v for k, v in per_style.items() if k not in ("smoothed", "stylize_s_samples")} | {
                        s: round(r["warping_error"], 5) for s, r in per_style["smoothed"].items()})
    return result


def _mean_over_styles(clip: dict[str, Any], get: Any) -> float:
    return statistics.fmean(get(s) for s in clip["styles"].values())


def render_quality(result: dict[str, Any]) -> str:
    """The docs/QUALITY.md tables (means over the styles), for pasting: the doc's prose is written by hand."""
    clips = result["clips"]
    keys = [f"{s:g}" for s in result["meta"]["strengths"]]

    def numbers(clip: dict[str, Any], metric: str) -> list[float]:
        """[ours, smoothed at each strength] for one clip, means over the styles."""
        return [_mean_over_styles(clip, lambda s: s["none"][metric]),
                *[_mean_over_styles(clip, lambda s, k=k: s["smoothed"][k][metric]) for k in keys]]

    def table(first: str, floor_key: str, share_key: str, metric: str, digits: int) -> str:
        rows = [[c[share_key], c[floor_key], *numbers(c, metric)] for c in clips]  # share, content, ours, smoothed
        mean = [statistics.fmean(col) for col in zip(*rows, strict=True)]
        cells = []
        for name, row in [*((c["clip"], r) for c, r in zip(clips, rows, strict=True)), ("**mean**", mean)]:
            ours = row[2]
            cells.append([name, f"{row[0]:.2f}", f"{row[1]:.{digits}f}", f"{ours:.{digits}f}",
                          *[f"{v:.{digits}f} ({(v / ours - 1) * 100:+.0f}%)" for v in row[3:]]])
        return markdown_table(["clip", first, "content", "ours", *[f"+ smoothing {k}" for k in keys]], cells)

    change_rows = []
    for c in clips:
        cells = [c["clip"]]
        for k in keys:
            change = _mean_over_styles(c, lambda s, k=k: s["smoothed"][k]["change_255"])
            sharp = _mean_over_styles(c, lambda s, k=k: s["smoothed"][k]["sharpness_ratio"])
            trusted = _mean_over_styles(c, lambda s, k=k: s["smoothed"][k]["trusted_fraction"])
            cells.append(f"{change:.2f} / {sharp:.3f} / {trusted:.2f}")
        cells.append(str(sum(s["smoothed"][k]["cuts"] for s in c["styles"].values() for k in keys)))
        change_rows.append(cells)
    return "\n\n".join([
        "Warping error (mean squared RGB error on [0, 1], occlusion-masked; lower is steadier):",
        table("valid fraction", "input_warping_error", "valid_fraction", "warping_error", 5),
        "Static flicker (mean |out_t - out_{t-1}| of 255 over pixels whose content changed < 2/255; no flow):",
        table("static share", "input_static_flicker_255", "static_fraction", "static_flicker_255", 2),
        "Change vs unsmoothed (mean |smoothed - unsmoothed| of 255) / sharpness ratio (mean |gradient|, smoothed /"
        " unsmoothed) / share of pixels the smoother trusted:",
        markdown_table(["clip", *[f"strength {k}" for k in keys], "frames not blended (cuts, all strengths)"],
                       change_rows),
    ]) + "\n"


def render_speed(result: dict[str, Any]) -> str:
    """The docs/BENCHMARKS.md section: seconds per frame only (the quality numbers live in docs/QUALITY.md)."""
    meta = result["meta"]
    keys = [f"{s:g}" for s in meta["strengths"]]
    n_styles = len(meta["styles"])
    rows = []
    for c in result["clips"]:
        stylize = _mean_over_styles(c, lambda s: s["stylize_s_per_frame"])
        smooth = [_mean_over_styles(c, lambda s, k=k: s["smoothed"][k]["smooth_s_per_frame"]) for k in keys]
        rows.append([c["clip"], f"{c['width']}x{c['height']}", f"{stylize:.3f}",
                     *[f"{v * 1000:.1f} ms ({v / stylize * 100:.1f}%)" for v in smooth]])
    table = markdown_table(["clip", "frame (WxH)", "stylize s / frame", *[f"smoothing {k}" for k in keys]], rows)
    return (
        f"## Video frames and temporal smoothing (`bench/video.py`, issue 20)\n\n{machine_line(meta)}\n"
        f"Command: `{meta['command']}`. {meta['frames']} frames per clip at a {meta['size']} px short side, "
        f"{n_styles} style{'s (means over them)' if n_styles > 1 else ''}; stylize = `stylize_from_features` with "
        "the style encoded once (as the service caches it); smoothing = `TemporalSmoother.step` (one DIS flow "
        "pair, the occlusion check and the warps) on the frames after the first; medians over the frames. Quality "
        "numbers: docs/QUALITY.md.\n\n"
        f"{table}\n"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video-dir", type=Path, default=SHARED / "data" / "video")
    parser.add_argument("--style-dir", type=Path, default=SHARED / "data" / "eval" / "style")
    parser.add_argument("--style-pool", type=int, default=8,
                        help="the harness's fixed-seed style selection of this size (seed 0; 8 = docs/QUALITY.md's "
                             "latest table) ...")
    parser.add_argument("--styles", type=int, default=2, help="... of which the first this many are used")
    parser.add_argument("--clips", default="", help="comma-separated clip names (default: all)")
    parser.add_argument("--size", type=int, default=256, help="frame and style short side in px")
    parser.add_argument("--frames", type=int, default=30, help="first frames of each clip")
    parser.add_argument("--strengths", default="0.3,0.5,0.7")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--weights", default=None, help="weights file; default: the shipped weights")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "video-cpu.json")
    parser.add_argument("--out-md", type=Path, default=None, help="also write the quality tables here")
    parser.add_argument("--doc", type=Path, default=DOC_PATH)
    parser.add_argument("--no-doc", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not args.video_dir.is_dir():
        logger.warning("no video clips at %s (the shared data is absent): nothing to measure", args.video_dir)
        return 0
    import model
    from training.data import list_images
    from training.evaluate import load_at, select

    try:
        strengths = [float(s) for s in args.strengths.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--strengths: expected comma-separated numbers, got {args.strengths!r}") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device("cpu")
    weights = Path(args.weights) if args.weights else model.default_weights_path()
    net = model.load_model(weights).eval()
    style_files = select(list_images([args.style_dir]), args.style_pool, 0, "style")[: args.styles]
    with torch.inference_mode():
        styles = [(p.name, net.encode_style(load_at(p, args.size))) for p in style_files]
        first = next(p for p in sorted(args.video_dir.iterdir()) if p.is_dir())
        net.stylize_from_features(load_at(list_images([first])[0], args.size), [styles[0][1]])  # warm-up
    wanted = {c.strip() for c in args.clips.split(",") if c.strip()}
    clips = [p for p in sorted(args.video_dir.iterdir())
             if p.is_dir() and (not wanted or p.name in wanted) and len(list_images([p])) >= 2]
    results = []
    for clip in clips:
        logger.info("clip %s", clip.name)
        results.append(run_clip(net, clip, styles, args, strengths))
    meta = {**machine_info(device), "weights": weights.name, "size": args.size, "frames": args.frames,
            "styles": [name for name, _ in styles], "strengths": strengths,
            "timing": "median over the frames (s_per_frame); the means and samples are kept too",
            "threads": torch.get_num_threads(),
            "command": "python -m bench.video " + " ".join(argv if argv is not None else sys.argv[1:])}
    result = {"meta": meta, "clips": results}
    write_json(args.out, result)
    quality = render_quality(result)
    if args.out_md:
        args.out_md.parent.mkdir(parents=True, exist_ok=True)
        args.out_md.write_text(quality)
    sys.stdout.write(quality)
    if not args.no_doc:
        update_doc_section(args.doc, SECTION, render_speed(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
