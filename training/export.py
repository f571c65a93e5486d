"""Turn a training checkpoint into release weights: fp16, config + meta, sha256 recorded in a manifest.

    python -m training.export --checkpoint runs/a2k/checkpoints/last.pt --out weights/stya2k-v0.6-cpu.pt
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import is_train_state, load_trainable_state, save_checkpoint, write_manifest_entry
from model.config import ModelConfig
from model.stya2k import StyA2K
from training.losses import LossWeights

logger = logging.getLogger(__name__)
REPO_PARENT = Path(__file__).resolve().parents[2]


def portable_paths(data: Any) -> Any:
    """Paths under the folder holding the repo become '../...' so the meta does not leak a machine's layout."""
    if isinstance(data, dict):
        return {k: portable_paths(v) for k, v in data.items()}
    if isinstance(data, list):
        return [portable_paths(v) for v in data]
    if isinstance(data, str) and data.startswith(f"{REPO_PARENT}/"):
        return "../" + data[len(str(REPO_PARENT)) + 1 :]
    return data


def release_meta(state: dict[str, Any], version: str | None) -> dict[str, Any]:
    """What a release file says about how it was made."""
    cfg = state["train_config"]
    return {
        "version": version or f"{cfg['arch']}-iter{state['iteration']}",
        "arch": cfg["arch"],
        "iterations": int(state["iteration"]),
        "batch_size": cfg["batch_size"],
        "crop_size": cfg["crop_size"],
        "load_size": cfg["load_size"],
        "lr": cfg["lr"],
        "planned_iterations": cfg["iters"],
        "schedule_start": int(cfg.get("schedule_start", 0)),
        # {"style": .., "a2k": .., "content": ..}: every LossWeights field the run's config has, by its short name
        "loss_weights": {f.name.removesuffix("_weight"): cfg[f.name] for f in fields(LossWeights) if f.name in cfg},
        "seed": cfg["seed"],
        "train_wall_s": round(float(state.get("wall_s", 0.0)), 1),
        "data": portable_paths(state.get("data", {})),
        "exported_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "torch": str(torch.__version__),
    }


def export_release(
    checkpoint: str | Path,
    out: str | Path,
    *,
    manifest: str | Path | None = None,
    version: str | None = None,
    half: bool = True,
    extra_meta: dict[str, Any] | None = None,
) -> str:
    """Write release weights from a training checkpoint; returns their sha256 (also put in the manifest).

    ``extra_meta`` is merged over the recipe meta (e.g. a GPU lease's GPU name, images seen, budget)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if not is_train_state(state):
        raise ValueError(f"{checkpoint} is not a training checkpoint written by training.train")
    net = StyA2K(ModelConfig.from_dict(state["model_config"]))
    load_trainable_state(net, state["model"])
    out_path = Path(out)
    meta = {**release_meta(state, version), **(extra_meta or {})}
    sha = save_checkpoint(net, out_path, half=half, meta=meta)
    write_manifest_entry(out_path, sha, Path(manifest) if manifest else None)
    return sha


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="runs/<run>/checkpoints/*.pt")
    parser.add_argument("--out", required=True, help="release weights file to write")
    parser.add_argument("--manifest", default=None, help="sha256sum manifest (default: next to --out)")
    parser.add_argument("--version-tag", default=None, help="version string stored in the file's meta")
    parser.add_argument("--fp32", action="store_true", help="keep fp32 instead of fp16")


def run(args: argparse.Namespace) -> int:
    path = Path(args.checkpoint)
    if not path.exists():
        logger.error("checkpoint %s does not exist", path)
        return 2
    sha = export_release(path, args.out, manifest=args.manifest, version=args.version_tag, half=not args.fp32)
    logger.info("wrote %s sha256 %s", args.out, sha)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m training.export", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
