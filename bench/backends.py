"""Paired backend benchmark (issue 29): seconds per image of the engine's own batch path, torch (the tuned
service path: NHWC, the heap, the auto precision) against ONNX Runtime float32 on the exported graphs, in
alternating rounds in one process so both see the same machine state.

    python -m bench.backends --size 512 --rounds 4            # the measurement (a quiet machine, please)
    python -m bench.backends --size 64 --rounds 1 --weights random   # a check that it runs
    python -m bench.backends --device cuda    # torch on CUDA; onnxruntime too where its CUDA provider is installed

Prints one JSON object: per backend the median and every round's seconds per image, the speedup, and the outputs'
max / mean abs difference in levels of 255 (the quality cost of the swap). int8 and OpenVINO are not in it yet.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from service import transfer
from service.contract import Mode, TransferRequest
from service.engine import Engine
from service.metrics import ServiceMetrics
from service.settings import Settings

BACKENDS = ("torch", "onnxruntime")


def photo(side: int, seed: int) -> bytes:
    """A smooth, edged test image as PNG bytes (no data set needed)."""
    import io

    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, side // 32), max(2, side // 32), generator=generator)
    image = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False)
    image = (image + 0.05 * torch.rand(1, 3, side, side, generator=generator)).clamp(0, 1)
    array = (image[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def onnxruntime_device(device: str) -> str:
    """Where the onnxruntime backend can run when torch runs on ``device``: the CPU when that onnxruntime has no
    GPU provider (the CPU build), so a GPU box still times what it can."""
    import onnxruntime as ort

    gpu = {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort.get_available_providers())
    return device if device == "cpu" or gpu else "cpu"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="content side (px)")
    parser.add_argument("--style-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (one call per backend each)")
    parser.add_argument("--weights", default=None, help="weights file; 'random' for a check; default: shipped")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (onnxruntime: where it has a provider)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    devices = {"torch": args.device, "onnxruntime": onnxruntime_device(args.device)}
    content, style = photo(args.size, 1), photo(args.style_size, 2)
    engines, jobs, load_s = {}, {}, {}
    for name in BACKENDS:
        settings = Settings(weights=args.weights, backend=name, device=devices[name], threads=args.threads,
                            default_side=args.size, max_side=max(args.size, 1024), style_size=args.style_size)
        started = time.monotonic()
        engine = Engine(settings, ServiceMetrics())
        engine.load()
        engine.warm_up()
        load_s[name] = round(time.monotonic() - started, 2)
        request = TransferRequest(mode=Mode.stylize, content=content, styles=[style], max_side=args.size)
        engine.run_batch([transfer.prepare(request, settings, lambda key: None)])  # fills the style cache
        jobs[name] = transfer.prepare(request, settings, engine.lookup_style)
        engines[name] = engine
    times: dict[str, list[float]] = {name: [] for name in BACKENDS}
    outputs: dict[str, torch.Tensor] = {}
    for _ in range(args.rounds):
        for name in BACKENDS:
            started = time.perf_counter()
            result = engines[name].run_batch([jobs[name]])[0]
            times[name].append(round(time.perf_counter() - started, 4))
            if not isinstance(result, torch.Tensor):
                raise result
            outputs[name] = result
    diff = (outputs["onnxruntime"].float() - outputs["torch"].float()).abs()
    medians = {name: statistics.median(values) for name, values in times.items()}
    report = {
        "size": args.size, "style_size": args.style_size, "rounds": args.rounds, "threads": torch.get_num_threads(),
        "devices": devices, "onnxruntime_providers": engines["onnxruntime"].backend.info()["providers"],
        "s_per_image": medians, "rounds_s": times, "load_s": load_s,
        "speedup_onnxruntime": round(medians["torch"] / medians["onnxruntime"], 3),
        "torch_dtype": engines["torch"].dtype_name,
        "diff_levels": {"max": float(diff.max()), "mean": round(float(diff.mean()), 4)},
    }
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
