"""Quality harness (paper Table 1 and Table 3) for one or several weights files, side by side.

For every (content, style) pair of a fixed-seed selection (default 15 x 20 = 300 pairs, content at a 512 px
short side) it reports:
- content loss: sum over relu4_1, relu5_1 of MSE(mvn(F(out)), mvn(F(content))), mvn = mean-variance norm;
- style loss: sum over relu1_1..relu5_1 of MSE of channel means + MSE of channel stds, output vs style;
- texture (Gram) loss: mean over relu1_1..relu4_1 of ||G(out) - G(style)||_F^2 with G = F F^T / (C*H*W)
  (Gatys et al. 2016's texture statistic, Johnson et al. 2016's normalisation), output vs style: it sees which
  channels fire *together* (strokes, hatching, motifs), where the mean/std style loss sees each channel alone;
- LPIPS v0.1 AlexNet between output and content (when the LPIPS weights folder exists);
- seconds per image (stylize call only);
- style retrieval: the share of outputs whose global VGG statistics (channel mean/std at relu1_1..relu5_1, the
  style-loss distance) are nearest to their own style among the N styles (a style-blind model scores ~1/N);
- style spread: mean LPIPS between the outputs of the same photo under two different styles (style-blind ~0).
Two references that need no training can be rows too: ``reference:identity`` (the content itself) and
``reference:color`` (per-channel RGB mean/std colour transfer from the style).
F is the project's frozen VGG-19 encoder (the same for all weights compared), so absolute values are on our
encoder's (normalised) feature scale, not the paper's. With ``--video-dir`` it also stylizes each clip frame by
frame and reports the optical-flow warping error (OpenCV, a main dependency).

    python -m training.evaluate --weights weights/stya2k-v0.6-cpu.pt --size 256 --out-json q.json --out-md q.md
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from model import functional as fn
from model.checkpoint import load_checkpoint
from model.config import ModelConfig
from model.encoder import VGGEncoder
from model.hardware import select_device, start_command
from model.imageio import pil_to_tensor
from model.stya2k import StyA2K
from training.data import list_images, load_rgb, resize_short_side
from training.export import portable_paths

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
CONTENT_TAPS = ("relu4_1", "relu5_1")
STYLE_TAPS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
TEXTURE_TAPS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")  # Gatys et al.'s texture layers up to relu4_1
MVN_EPS = 1e-5


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how (one run may compare several weights files)."""

    weights: tuple[str, ...]
    content_dir: str = str(SHARED / "data" / "eval" / "content")
    style_dir: str = str(SHARED / "data" / "eval" / "style")
    n_content: int = 15
    n_style: int = 20
    size: int = 512
    style_size: int | None = None  # the network's style input (STYA2K_STYLE_SIZE); default: same as size
    style_target_size: int | None = None  # what style/texture losses score against; default: style_size
    style_fit: str = "short"  # how the network's style input is prepared (STYLE_FITS); scored against "short"
    seed: int = 0
    lpips_dir: str | None = str(SHARED / "weights" / "lpips")
    device: str = "cpu"
    threads: int | None = None
    video_dir: str | None = None
    video_size: int = 256
    video_frames: int = 20
    video_style_index: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def select(files: Sequence[Path], count: int, seed: int, what: str) -> list[Path]:
    """A fixed-seed subset (sorted listing, then a seeded sample) so runs compare like with like."""
    if count > len(files):
        raise ValueError(f"asked for {count} {what} images but only {len(files)} exist")
    return sorted(random.Random(f"{seed}-{what}").sample(list(files), count))


def load_at(path: Path, short_side: int) -> Tensor:
    return pil_to_tensor(resize_short_side(load_rgb(path, min_short_side=16), short_side))[None]  # (1, 3, H, W)


# How the style image the network sees is prepared from the file, at ``size`` px:
# short: short side = size (the harness's own rule, the default: earlier tables stay comparable);
# crop:  short side = size, then a centred size x size square (the service's STYA2K_STYLE_FIT=crop);
# whole: long side = size, aspect kept (STYA2K_STYLE_FIT=whole).
STYLE_FITS = ("short", "crop", "whole")
MIN_STYLE_SIDE = 16  # the service's geometry.MIN_SIDE (the service refuses narrower; the harness clamps)


def prepare_style(img: Image.Image, size: int, fit: str) -> Image.Image:
    """``img`` as the network's style input under ``fit`` (one of STYLE_FITS). Bicubic, like :func:`load_at`,
    so the fit is the only difference between rows."""
    if fit == "short":
        return resize_short_side(img, size)
    if fit == "crop":
        scaled = resize_short_side(img, size)
        left, top = (scaled.width - size) // 2, (scaled.height - size) // 2
        return scaled.crop((left, top, left + size, top + size))
    if fit == "whole":
        scale = size / max(img.size)
        new_size = (max(MIN_STYLE_SIDE, round(img.width * scale)), max(MIN_STYLE_SIDE, round(img.height * scale)))
        return img if new_size == img.size else img.resize(new_size, Image.Resampling.BICUBIC)
    raise ValueError(f"unknown style fit {fit!r}; expected one of {', '.join(STYLE_FITS)}")


def _mean_std(feat: Tensor) -> tuple[Tensor, Tensor]:
    flat = feat.flatten(2)  # (B, C, h*w)
    return flat.mean(-1), (flat.var(-1, unbiased=False) + MVN_EPS).sqrt()


def _mvn(feat: Tensor) -> Tensor:
    mean, std = _mean_std(feat)
    return (feat - mean[..., None, None]) / std[..., None, None]


def content_loss(out_feats: dict[str, Tensor], content_feats: dict[str, Tensor]) -> float:
    return float(sum(F.mse_loss(_mvn(out_feats[t]), _mvn(content_feats[t])) for t in CONTENT_TAPS))


def style_loss(out_feats: dict[str, Tensor], style_feats: dict[str, Tensor]) -> float:
    total = 0.0
    for tap in STYLE_TAPS:
        o_mean, o_std = _mean_std(out_feats[tap])
        s_mean, s_std = _mean_std(style_feats[tap])
        total += float(F.mse_loss(o_mean, s_mean) + F.mse_loss(o_std, s_std))
    return total


def style_grams(feats: dict[str, Tensor]) -> dict[str, Tensor]:
    """{tap: (B, C, C) Gram matrix} of the texture taps (computed once per style image)."""
    return {tap: fn.gram_matrix(feats[tap]) for tap in TEXTURE_TAPS}


def texture_loss(out_feats: dict[str, Tensor], style_gram: dict[str, Tensor]) -> float:
    """Mean over TEXTURE_TAPS of the squared Frobenius distance of the Grams (``fn.gram_distance``): 0 for the
    style image itself, whatever its size; a batch of outputs gives the batch mean."""
    return _mean([float(fn.gram_distance(fn.gram_matrix(out_feats[tap]), style_gram[tap]).mean())
                  for tap in TEXTURE_TAPS])


def style_distances(out_feats: dict[str, Tensor], style_feats: Sequence[dict[str, Tensor]]) -> list[float]:
    """The style-loss distance of one output to each style: the basis of style retrieval."""
    return [style_loss(out_feats, feats) for feats in style_feats]


class IdentityReference(torch.nn.Module):
    """``reference:identity``: returns the content unchanged (the floor of style retrieval and spread)."""

    def __init__(self) -> None:
        super().__init__()
        self.config = ModelConfig(arch="a2k")
        self.meta: dict[str, Any] = {"reference": "identity"}
        self.label = "reference (identity)"

    def stylize(self, content: Tensor, style: Tensor) -> Tensor:
        return content.clone()


class ColorTransferReference(IdentityReference):
    """``reference:color``: per-channel RGB mean/std of the content replaced by the style's (no training)."""

    def __init__(self) -> None:
        super().__init__()
        self.meta = {"reference": "color"}
        self.label = "reference (colour transfer)"

    def stylize(self, content: Tensor, style: Tensor) -> Tensor:
        c_mean, c_std = _mean_std(content)  # (B, 3) each
        s_mean, s_std = _mean_std(style)
        out = (content - c_mean[..., None, None]) / c_std[..., None, None] * s_std[..., None, None]
        return (out + s_mean[..., None, None]).clamp(0, 1)


REFERENCES = {"identity": IdentityReference, "color": ColorTransferReference}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


class Harness:
    """Holds the metric networks and the selected images; ``evaluate(net)`` returns one row of the table."""

    def __init__(self, cfg: EvalConfig) -> None:
        self.cfg = cfg
        self.device = select_device(cfg.device)
        self.encoder = VGGEncoder().to(self.device)
        self.lpips = None
        if cfg.lpips_dir and Path(cfg.lpips_dir).is_dir():
            from model.lpips import LPIPS

            self.lpips = LPIPS.from_folder(cfg.lpips_dir).to(self.device)
        else:
            logger.warning("LPIPS weights folder %s not found: LPIPS is not reported", cfg.lpips_dir)
        self.content_files = select(list_images([cfg.content_dir]), cfg.n_content, cfg.seed, "content")
        self.style_files = select(list_images([cfg.style_dir]), cfg.n_style, cfg.seed, "style")
        if cfg.style_fit not in STYLE_FITS:
            raise ValueError(f"unknown style fit {cfg.style_fit!r}; expected one of {', '.join(STYLE_FITS)}")
        style_size = cfg.style_size or cfg.size
        target_size = cfg.style_target_size or style_size
        self.contents = [load_at(p, cfg.size).to(self.device) for p in self.content_files]
        # The style loss, texture loss and retrieval always score against the same target, the style at a short
        # side of target_size (the harness's original rule), whatever the fit or size of the network's input: a
        # crop that drops half a panorama is scored against the whole panorama, and rows that feed the style at
        # 256, 384 or 512 px are scored against one painting, not three.
        self.style_targets = [load_at(p, target_size).to(self.device) for p in self.style_files]
        self.styles = (
            self.style_targets if cfg.style_fit == "short" and style_size == target_size
            else [pil_to_tensor(prepare_style(load_rgb(p, min_short_side=16), style_size, cfg.style_fit))[None]
                  .to(self.device) for p in self.style_files]  # each (1, 3, Hs, Ws)
        )

    @torch.inference_mode()
    def evaluate(self, net: torch.nn.Module, name: str) -> dict[str, Any]:
        net = net.to(self.device).eval()
        c_losses, s_losses, t_losses, lpips_values, seconds = [], [], [], [], []
        hits, spreads = [], []
        content_feats = [self.encoder(c) for c in self.contents]
        style_feats = [self.encoder(s) for s in self.style_targets]
        grams = [style_grams(feats) for feats in style_feats]
        net.stylize(self.contents[0], self.styles[0])  # warm-up: first call pays one-off allocations
        for ci, content in enumerate(self.contents):
            outputs = []
            for si, style in enumerate(self.styles):
                start = time.perf_counter()
                out = net.stylize(content, style)  # (1, 3, H, W) in [0, 1]
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                seconds.append(time.perf_counter() - start)
                out_feats = self.encoder(out)
                c_losses.append(content_loss(out_feats, content_feats[ci]))
                distances = style_distances(out_feats, style_feats)
                s_losses.append(distances[si])
                t_losses.append(texture_loss(out_feats, grams[si]))
                hits.append(float(min(range(len(distances)), key=distances.__getitem__) == si))
                if self.lpips is not None:
                    lpips_values.append(float(self.lpips(out, content)))
                outputs.append(out)
            if self.lpips is not None:
                spreads += [float(self.lpips(outputs[a], outputs[b]))
                            for a in range(len(outputs)) for b in range(a + 1, len(outputs))]
        row: dict[str, Any] = {
            "name": name,
            "arch": "reference" if "reference" in net.meta else net.config.arch,
            "iterations": net.meta.get("iterations"),
            "pairs": len(c_losses),
            "content_loss": _mean(c_losses),
            "style_loss": _mean(s_losses),
            "texture_loss": _mean(t_losses),
            "lpips": _mean(lpips_values) if lpips_values else None,
            "style_retrieval": _mean(hits),
            "style_spread": _mean(spreads) if spreads else None,
            "n_styles": len(self.styles),
            "style_fit": self.cfg.style_fit,
            "style_size": self.cfg.style_size or self.cfg.size,
            "sec_per_image": _mean(seconds),
        }
        if self.cfg.video_dir and "reference" not in net.meta:
            row["temporal"] = self.temporal(net)
        return row

    def temporal(self, net: torch.nn.Module) -> dict[str, dict[str, float]]:
        """Warping error per clip folder under ``video_dir`` (first ``video_frames`` frames)."""
        from model.temporal import clip_warping_error

        style = self.styles[self.cfg.video_style_index % len(self.styles)]
        results = {}
        for clip in sorted(p for p in Path(self.cfg.video_dir or "").iterdir() if p.is_dir()):
            files = list_images([clip])[: self.cfg.video_frames]
            if len(files) < 2:
                continue
            frames = [load_at(f, self.cfg.video_size)[0].to(self.device) for f in files]

            def stylize(frame: Tensor) -> Tensor:
                return net.stylize(frame[None], style)[0].float().cpu()  # (3, H, W)

            results[clip.name] = clip_warping_error([f.cpu() for f in frames], stylize)
        return results


def load_weights(spec: str) -> tuple[torch.nn.Module, str]:
    """``path`` -> (model, display name). ``random:<arch>`` gives an untrained model (harness testing),
    ``reference:identity`` / ``reference:color`` the training-free references."""
    if spec.startswith("reference:"):
        kind = spec.split(":", 1)[1]
        if kind not in REFERENCES:
            raise ValueError(f"unknown reference {kind!r}; expected one of {', '.join(REFERENCES)}")
        ref = REFERENCES[kind]()
        return ref, ref.label
    if spec.startswith("random:"):
        torch.manual_seed(0)
        return StyA2K(ModelConfig(arch=spec.split(":", 1)[1])), spec
    return load_checkpoint(spec), Path(spec).name


def markdown_table(rows: Sequence[dict[str, Any]], cfg: EvalConfig) -> str:
    def fmt(value: Any, digits: int = 4) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    lines = [
        f"{rows[0]['pairs'] if rows else 0} pairs ({cfg.n_content} content x {cfg.n_style} style, seed {cfg.seed}),"
        f" content short side {cfg.size} px, style fit {cfg.style_fit} at {cfg.style_size or cfg.size} px,"
        f" scored against the style at a {cfg.style_target_size or cfg.style_size or cfg.size} px short side,"
        f" device {cfg.device}.",
        "",
        f"Style retrieval: share of outputs nearest (style-loss distance) to their own style among the "
        f"{cfg.n_style}; chance = {1 / max(cfg.n_style, 1):.3f}. Style spread: LPIPS between the same photo "
        "under two styles. LPIPS: output vs content. Texture: Gram-matrix (Gatys) loss, mean over relu1_1..relu4_1 "
        "of ||G(out) - G(style)||_F^2, G = F F^T / (C H W).",
        "",
        "| weights | arch | iterations | content loss ↓ | style loss ↓ | texture (Gram) ↓ | LPIPS ↓ | "
        "style retrieval ↑ | style spread ↑ | s / image |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['arch']} | {fmt(r['iterations'])} | {fmt(r['content_loss'])} | "
            f"{fmt(r['style_loss'])} | {fmt(r.get('texture_loss'))} | {fmt(r['lpips'])} | "
            f"{fmt(r.get('style_retrieval'), 3)} | {fmt(r.get('style_spread'))} | {fmt(r['sec_per_image'], 3)} |"
        )
    clips = sorted({clip for r in rows for clip in r.get("temporal", {})})
    if clips:
        lines += ["", "Warping error (mean squared RGB error on [0, 1], occlusion-masked; lower is steadier):", ""]
        lines.append("| weights | " + " | ".join(clips) + " | mean |")
        lines.append("|---|" + "---|" * (len(clips) + 1))
        for r in (r for r in rows if "temporal" in r):
            errs = [r["temporal"][c]["warping_error"] for c in clips if c in r.get("temporal", {})]
            lines.append(f"| {r['name']} | " + " | ".join(f"{e:.5f}" for e in errs) + f" | {_mean(errs):.5f} |")
        first = next(r["temporal"] for r in rows if "temporal" in r)
        floor = " | ".join(f"{first[c]['input_warping_error']:.5f}" for c in clips)
        lines.append(f"| (input frames) | {floor} | |")
    return "\n".join(lines) + "\n"


def evaluate_all(cfg: EvalConfig) -> list[dict[str, Any]]:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    harness = Harness(cfg)
    rows = []
    for spec in cfg.weights:
        net, name = load_weights(spec)
        logger.info("evaluating %s on %d pairs", name, len(harness.contents) * len(harness.styles))
        rows.append(harness.evaluate(net, name))
    return rows


# ---------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``stya2k eval`` / ``python -m training.evaluate``."""
    d = EvalConfig(weights=())
    parser.add_argument("--weights", action="append", required=True, metavar="PATH",
                        help="weights file (repeat to compare side by side); 'random:<arch>' = untrained; "
                             "'reference:identity' / 'reference:color' = training-free references")
    parser.add_argument("--content-dir", default=d.content_dir)
    parser.add_argument("--style-dir", default=d.style_dir)
    parser.add_argument("--n-content", type=int, default=d.n_content)
    parser.add_argument("--n-style", type=int, default=d.n_style)
    parser.add_argument("--size", type=int, default=d.size, help="content short side in px")
    parser.add_argument("--style-size", type=int, default=None,
                        help="the network's style input in px (the service's STYA2K_STYLE_SIZE; default: --size)")
    parser.add_argument("--style-target-size", type=int, default=None,
                        help="short side of the style image the style/texture losses and retrieval score against "
                             "(default: --style-size, as earlier tables); fix it to compare --style-size values")
    parser.add_argument("--style-fit", choices=STYLE_FITS, default=d.style_fit,
                        help="the network's style input: short = short side at --style-size (default; earlier "
                             "tables); crop = that, centre-cropped square (the service's crop); whole = long "
                             "side at --style-size (the service's whole). Always scored against 'short'")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--lpips-dir", default=d.lpips_dir)
    parser.add_argument("--device", default=d.device)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--video-dir", default=None, help="folder of clip folders of frames (temporal metric)")
    parser.add_argument("--video-size", type=int, default=d.video_size)
    parser.add_argument("--video-frames", type=int, default=d.video_frames)
    parser.add_argument("--out-json", default=None)
    parser.add_argument("--out-md", default=None)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = EvalConfig(
            weights=tuple(args.weights), content_dir=args.content_dir, style_dir=args.style_dir,
            n_content=args.n_content, n_style=args.n_style, size=args.size, style_size=args.style_size,
            style_target_size=args.style_target_size,
            style_fit=args.style_fit, seed=args.seed, lpips_dir=args.lpips_dir, device=args.device,
            threads=args.threads,
            video_dir=args.video_dir, video_size=args.video_size, video_frames=args.video_frames,
        )
        rows = evaluate_all(cfg)
    except (ValueError, OSError, RuntimeError, ImportError) as exc:
        logger.error("evaluation failed: %s", exc)
        return 2
    table = markdown_table(rows, cfg)
    result = {"config": portable_paths(asdict(cfg)), "results": rows, "torch": str(torch.__version__)}
    if args.out_json:
        Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_json).write_text(json.dumps(result, indent=2) + "\n")
    if args.out_md:
        Path(args.out_md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_md).write_text(table)
    sys.stdout.write(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    start_command(__name__)  # before any tensor: the CPU allocator reads the huge-page switch once
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
