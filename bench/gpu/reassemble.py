"""Join the weight parts a GPU training lease returned, verify them, and install them as release weights.

    python -m bench.gpu.reassemble /work/.device/<files_at>        # -> weights/stya2k-v1.pt + weights/MANIFEST
    python -m bench.gpu.reassemble OUT --weights-dir /tmp/w --name stya2k-v1-test.pt

Reads OUT/summary.json (written by bench/gpu/train_lease.py), checks every part's size and sha256, joins
them, checks the joined file's sha256 against the summary, then loads it as a checkpoint (its tensor digest
and config) before it replaces anything under the weights folder; the MANIFEST line is written last
(model.checkpoint.write_manifest_entry). A corrupted or missing part is refused with its name, and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from bench.gpu import parts

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


class ReassembleError(RuntimeError):
    """The lease output is not usable as release weights."""


def read_summary(folder: Path) -> dict[str, Any]:
    path = folder / "summary.json"
    if not path.is_file():
        raise ReassembleError(f"{folder} holds no summary.json: not the output of bench/gpu/train_lease.sh")
    summary = json.loads(path.read_text())
    if summary.get("format") != "stya2k-train-lease" or "weights" not in summary:
        status = summary.get("status", "unknown")
        raise ReassembleError(f"{path} records no weights (status {status}): the lease did not export any")
    return summary


def reassemble(folder: Path, weights_dir: Path, name: str | None = None) -> tuple[Path, str]:
    """Join + verify the parts in ``folder``; install them as ``weights_dir/name``; returns (path, sha256)."""
    from model.checkpoint import CheckpointError, load_checkpoint, write_manifest_entry

    summary = read_summary(folder)
    record = summary["weights"]
    target = weights_dir / (name or record["file"])
    staging = weights_dir / f".{target.name}.staging"
    try:
        sha = parts.join_parts(record, folder, staging)
        try:
            model = load_checkpoint(staging, verify_manifest=False)
        except CheckpointError as exc:
            raise ReassembleError(f"the joined file matches its sha256 but is not loadable weights: {exc}") from exc
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
    write_manifest_entry(target, sha)
    meta = model.meta
    logger.info("reassemble: %s (sha256 %s) from %d parts; version %s, iteration %s, images seen %s, GPU %s",
                target, sha, len(record["parts"]), meta.get("version"), meta.get("iterations"),
                meta.get("images_seen"), meta.get("gpu"))
    return target, sha


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m bench.gpu.reassemble", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="what the lease wrote under $OUT (the run's files_at)")
    parser.add_argument("--weights-dir", type=Path, default=REPO_ROOT / "weights")
    parser.add_argument("--name", default=None, help="file name to install as (default: the summary's, stya2k-v1.pt)")
    args = parser.parse_args(argv)
    try:
        reassemble(args.folder, args.weights_dir, args.name)
    except (ReassembleError, parts.PartsError, OSError) as exc:
        logger.error("reassemble: %s; nothing was written", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
