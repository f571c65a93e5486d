"""OpenMP wait policy of the torch engine, on a CPU shared with other work (why the service sets OMP_WAIT_POLICY).

libgomp reads ``OMP_WAIT_POLICY`` once, when torch loads it: PASSIVE (idle threads sleep: the service's default,
service/__init__.py), unset (libgomp's default: spin ~300k iterations at every barrier, then sleep) or ACTIVE
(spin). Each measurement is a fresh process with one policy that loads the torch engine at the service's defaults
(content ``--size``, style ``--style-size``, the style's features cached, the auto precision) and times ``--calls``
``Engine.run_batch`` calls after a warm one. Scenarios (``--scenarios``):

- ``quiet``: one process at a time;
- ``pair``: two processes of the same policy at once (two replicas on one box);
- ``burner``: one process beside a one-core busy loop (another program on the box).

The policies alternate within each round, so all see the same machine state. Prints one JSON object (and writes
it to ``--out``)::

    python -m bench.wait_policy --rounds 2 \\
        --content ../shared/data/eval/content/adaattn__datasets_contents_tubingen.jpg \\
        --style ../shared/data/eval/style/fns__images_styles_starry_night_crop.jpg \\
        --out bench/results/wait-policy-cpu.json
    python -m bench.wait_policy --weights random --size 64 --style-size 64 --calls 1 --rounds 1   # a check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

POLICIES = ("PASSIVE", "unset", "ACTIVE")
SCENARIOS = ("quiet", "pair", "burner")
BURNER = "while True: pass"


def child(args: argparse.Namespace) -> int:
    """One measurement: the engine under the policy this process was started with; JSON on stdout."""
    import torch  # first, so that importing the service below leaves the inherited policy as it is

    from bench.backends import cached_style_job, photo
    from service.engine import Engine
    from service.metrics import ServiceMetrics
    from service.settings import Settings

    content = args.content.read_bytes() if args.content else photo(args.size, 1)
    style = args.style.read_bytes() if args.style else photo(args.style_size, 2)
    settings = Settings(weights=args.weights, backend="torch", device="cpu", threads=args.threads,
                        default_side=args.size, max_side=max(args.size, 1024), style_size=args.style_size)
    engine = Engine(settings, ServiceMetrics())
    engine.load()
    engine.warm_up()
    job = cached_style_job(engine, settings, content, style, args.size)
    seconds = []
    for _ in range(args.calls):
        started = time.perf_counter()
        engine.run_batch([job])
        seconds.append(round(time.perf_counter() - started, 4))
    sys.stdout.write(json.dumps({"policy": os.environ.get("OMP_WAIT_POLICY", "unset"), "seconds": seconds,
                                 "median_s": statistics.median(seconds), "threads": torch.get_num_threads(),
                                 "dtype": engine.dtype_name}) + "\n")
    return 0


def child_command(args: argparse.Namespace) -> list[str]:
    command = [sys.executable, "-m", "bench.wait_policy", "--child", "--size", str(args.size), "--style-size",
               str(args.style_size), "--calls", str(args.calls), "--threads", str(args.threads)]
    for flag, value in (("--weights", args.weights), ("--content", args.content), ("--style", args.style)):
        if value is not None:
            command += [flag, str(value)]
    return command


def policy_env(policy: str) -> dict[str, str]:
    """The environment of one measurement: the service's huge-page setting, and the policy (or none)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | {"THP_MEM_ALLOC_ENABLE": "1"}
    return env if policy == "unset" else env | {"OMP_WAIT_POLICY": policy}


def measure(args: argparse.Namespace, scenario: str, policy: str) -> list[dict[str, Any]]:
    """One scenario x policy: the measuring processes' reports (two for ``pair``)."""
    copies = 2 if scenario == "pair" else 1
    burner = subprocess.Popen([sys.executable, "-c", BURNER]) if scenario == "burner" else None
    procs: list[subprocess.Popen[str]] = []
    try:
        procs = [subprocess.Popen(child_command(args), env=policy_env(policy), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(copies)]
        reports = []
        for proc in procs:
            out, err = proc.communicate(timeout=args.timeout_s)
            if proc.returncode != 0:
                raise RuntimeError(f"{scenario}/{policy}: the measuring process failed: {err[-2000:]}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports
    finally:  # nothing of this measurement may keep running into the next one (a timeout, a failed copy)
        for leftover in [*procs, *([burner] if burner is not None else [])]:
            if leftover.poll() is None:
                leftover.kill()
                leftover.wait()


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from bench import common

    runs: dict[str, dict[str, list[dict[str, Any]]]] = {s: {p: [] for p in POLICIES} for s in args.scenarios}
    for _ in range(args.rounds):
        for scenario in args.scenarios:
            for policy in POLICIES:
                runs[scenario][policy] += measure(args, scenario, policy)
    medians = {scenario: {policy: round(statistics.median(r["median_s"] for r in reports), 4)
                          for policy, reports in by_policy.items()}
               for scenario, by_policy in runs.items()}
    return {"machine": common.machine_info(torch.device("cpu")), "git": common.git_revision(),
            "content": str(args.content or "generated"), "style": str(args.style or "generated"),
            "size": args.size, "style_size": args.style_size, "calls": args.calls, "rounds": args.rounds,
            "median_s": medians, "runs": runs}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="content side (px)")
    parser.add_argument("--style-size", type=int, default=384, help="style side (px); the service's default")
    parser.add_argument("--calls", type=int, default=5, help="timed calls per process (median reported)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over every scenario and policy")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated: {', '.join(SCENARIOS)}")
    parser.add_argument("--weights", default=None, help="weights file; 'random' for a check; default: shipped")
    parser.add_argument("--threads", type=int, default=0, help="STYA2K_THREADS (0: torch's default)")
    parser.add_argument("--content", type=Path, default=None, help="content image file; default: generated")
    parser.add_argument("--style", type=Path, default=None, help="style image file; default: generated")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="most seconds per measuring process")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.child:
        from bench.common import parse_choice_list

        args.scenarios = parse_choice_list(args.scenarios, SCENARIOS, "scenario")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    report = run(args)
    if args.out:
        from bench.common import write_json

        write_json(args.out, report)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
