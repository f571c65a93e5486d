"""Jobs on a shared Redis store (issue 31): throughput with 1 vs 2 replicas, and the time a job takes to complete
elsewhere after its replica is killed with SIGKILL.

Starts a real redis-server (Debian's package, .ci/install-redis.sh) and real `python -m service` replicas with
STYA2K_JOBS_STORE=redis://...; random weights and small tiled jobs, so the figures are the store's and the
scheduling's, not the model's. The machine's cores are shared out: 1 replica x all threads vs 2 replicas x half.

    python -m bench.jobs_scaleout --jobs 12 --out bench/results/jobs-scaleout.json   # a quiet machine, please
    python -m bench.jobs_scaleout --jobs 2 --side 128 --claim-idle-s 2                # a check that it runs

Prints one JSON object (and writes it to --out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import torch

from bench import common
from bench.service import free_port, running_server, synthetic_image

PREFIX = "bench:"


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        raise SystemExit("redis-server is not installed (bash .ci/install-redis.sh)")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
         "--appendonly", "yes", "--appendfsync", "everysec", "--logfile", str(folder / "redis.log")]
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        import redis

        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer; see {folder / 'redis.log'}")
            time.sleep(0.05)
        client.close()
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


def server_args(threads: int) -> argparse.Namespace:
    """What bench.service.running_server reads, for a job replica."""
    return argparse.Namespace(
        device="cpu", dtype="auto", threads=threads, size=64, style_size=64, max_batch_size=4, max_wait_ms=5,
        concurrency=[1], compile=False, weights="random", ready_timeout_s=180,
    )  # fmt: skip


def replica_env(args: argparse.Namespace, store: str, name: str) -> dict[str, str]:
    return {
        "STYA2K_JOBS_STORE": store, "STYA2K_JOBS_KEY_PREFIX": PREFIX, "STYA2K_REPLICA_ID": name,
        "STYA2K_JOBS_MAX_SIDE": str(max(args.side, args.slow_side)), "STYA2K_TILE_PX": str(args.tile),
        "STYA2K_TILE_MARGIN_PX": str(args.tile // 2), "STYA2K_JOBS_QUEUE_SIZE": "256",
        "STYA2K_JOBS_STORE_CLAIM_IDLE_S": str(args.claim_idle_s), "STYA2K_WARMUP": "false",
    }  # fmt: skip


def threads_each(count: int) -> int:
    """The machine's cores shared out over ``count`` replicas."""
    return max(1, (os.cpu_count() or 1) // count)


@contextlib.contextmanager
def replicas(args: argparse.Namespace, store: str, count: int, log_dir: Path) -> Iterator[list[Any]]:
    threads = threads_each(count)
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(running_server(server_args(threads), replica_env(args, store, f"r{i + 1}"), log_dir))
            for i in range(count)
        ]


def submit(base_url: str, side: int, seed: int) -> str:
    files = {"content": ("c.png", synthetic_image(side, side, seed, "png")),
             "style": ("s.png", synthetic_image(64, 64, 1000 + seed, "png"))}  # fmt: skip
    response = httpx.post(f"{base_url}/v1/jobs", files=files, data={"mode": "stylize", "max_side": side}, timeout=60)
    response.raise_for_status()
    return str(response.headers["location"])


def wait_done(base_url: str, location: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = httpx.get(base_url + location, timeout=30).json()
        if body["state"] not in ("queued", "running"):
            return dict(body)
        time.sleep(0.05)
    raise RuntimeError(f"{location} not finished within {timeout_s:.0f} s")


def flush(store: str) -> None:
    import redis

    client = redis.Redis.from_url(store)
    client.flushdb()
    client.close()


def throughput(args: argparse.Namespace, store: str, count: int, log_dir: Path) -> dict[str, Any]:
    """``args.jobs`` jobs submitted at once (alternating replicas), timed until the last is done."""
    flush(store)
    with replicas(args, store, count, log_dir) as running:
        urls = [server.base_url for server in running]
        submit(urls[0], args.side, 999)  # one job first: every replica has joined the group and warmed up
        started = time.monotonic()
        locations = [submit(urls[i % count], args.side, i) for i in range(args.jobs)]
        bodies = [wait_done(urls[(i + 1) % count], loc, 1800) for i, loc in enumerate(locations)]
        wall = time.monotonic() - started
    states = sorted({body["state"] for body in bodies})
    running_s = [body["timings"]["running_s"] for body in bodies]
    return {
        "replicas": count, "threads_each": threads_each(count), "jobs": args.jobs,
        "side": args.side, "states": states, "wall_s": round(wall, 2), "jobs_per_s": round(args.jobs / wall, 3),
        "running_s_median": round(sorted(running_s)[len(running_s) // 2], 3),
    }  # fmt: skip


def owner_of(store: str, job_id: str) -> str:
    import redis

    client = redis.Redis.from_url(store, decode_responses=True)
    try:
        return str(client.hget(f"{PREFIX}job:{job_id}", "owner") or "")
    finally:
        client.close()


def takeover(args: argparse.Namespace, store: str, log_dir: Path) -> dict[str, Any]:
    """A slow job starts on one of two replicas; that replica is SIGKILLed: seconds until the job is done."""
    flush(store)
    with replicas(args, store, 2, log_dir) as running:
        urls = [server.base_url for server in running]
        location = submit(urls[0], args.slow_side, 7)
        job_id = location.rsplit("/", 1)[1]
        deadline = time.monotonic() + 120
        while httpx.get(urls[0] + location, timeout=30).json()["state"] != "running":
            if time.monotonic() > deadline:
                raise RuntimeError("the slow job never started")
            time.sleep(0.02)
        victim = next(i for i in range(2) if owner_of(store, job_id).startswith(f"r{i + 1}-"))
        survivor = urls[1 - victim]
        time.sleep(args.kill_after_s)
        running[victim].process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        restarted = None
        while True:
            body = httpx.get(survivor + location, timeout=30).json()
            if restarted is None and body.get("attempt", 0) >= 2:
                restarted = time.monotonic() - killed
            if body["state"] not in ("queued", "running"):
                break
            if time.monotonic() - killed > 1800:
                raise RuntimeError("the job did not complete after the kill")
            time.sleep(0.05)
        done = time.monotonic() - killed
    return {
        "slow_side": args.slow_side, "claim_idle_s": args.claim_idle_s, "killed_after_running_s": args.kill_after_s,
        "state": body["state"], "attempt": body.get("attempt"), "kill_to_restart_s": restarted and round(restarted, 2),
        "kill_to_done_s": round(done, 2), "second_run_s": body["timings"]["running_s"],
    }  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=12, help="jobs per throughput run")
    parser.add_argument("--side", type=int, default=256, help="side of a throughput job (px)")
    parser.add_argument("--tile", type=int, default=128, help="STYA2K_TILE_PX: a job is several steps")
    parser.add_argument("--slow-side", type=int, default=512, help="side of the job whose replica is killed")
    parser.add_argument("--kill-after-s", type=float, default=1.0, help="how long it runs before the kill")
    parser.add_argument("--claim-idle-s", type=float, default=30.0, help="STYA2K_JOBS_STORE_CLAIM_IDLE_S")
    parser.add_argument("--out", type=Path)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="stya2k-scaleout-") as tmp, redis_server(Path(tmp)) as store:
        log_dir = Path(tmp)
        result = {
            "machine": common.machine_info(torch.device("cpu")),
            "concurrent_training": common.concurrent_processes("campaign"),
            "date": time.strftime("%Y-%m-%d"),
            "git": common.git_revision(),
            "command": " ".join([Path(sys.executable).name, "-m", "bench.jobs_scaleout", *(argv or sys.argv[1:])]),
            "throughput": [throughput(args, store, count, log_dir) for count in (1, 2)],
            "takeover": takeover(args, store, log_dir),
        }
    text = json.dumps(result, indent=2)
    sys.stdout.write(text + "\n")
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
