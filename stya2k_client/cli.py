"""``stya2k-client``: the remote commands of ``stya2k ... --url`` for an install without torch (httpx only).

    stya2k-client styles                                             # the server's preset styles
    stya2k-client stylize photo.jpg --style-preset starry_night -o out.png
    stya2k-client interpolate photo.jpg a.jpg --style-preset great_wave --weights 0.7 0.3 -o blend.png
    stya2k-client multistyle photo.jpg a.jpg b.jpg --masks sky.png ground.png -o regions.png
    stya2k-client video clip.mp4 --style-preset starry_night -o out.mp4 --smoothing 0.5

The server is ``--url`` (default ``$STYA2K_URL``, else http://127.0.0.1:8000). Styles are the image files given,
then the ``--style-preset`` names, in that order (weights and masks follow it). An output side beyond the server's
sync limit runs as a job (``POST /v1/jobs``), as ``stya2k`` does. Exit codes: 0 done, 1 failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from stya2k_client.client import Client, Preset, StyA2KError, StyleInput

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
FORMAT_BY_SUFFIX = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
POLL_S = 0.5
COMMANDS = {
    "stylize": "one style",
    "interpolate": "a weighted blend of 2..N styles",
    "multistyle": "each region in its own style",
    "video": "every frame of a clip, as a job",
}


class UsageError(Exception):
    """Bad command-line input: exit code 2."""


def _styles(args: argparse.Namespace, least: int) -> list[StyleInput]:
    styles: list[StyleInput] = [_path(name, "style") for name in args.styles]
    styles += [Preset(name) for name in args.style_preset or ()]
    if len(styles) < least:
        raise UsageError(f"give at least {least} style(s): image files and/or --style-preset NAME")
    return styles


def _path(name: str, what: str) -> Path:
    path = Path(name)
    if not path.is_file():
        raise UsageError(f"{what} {path} does not exist or is not a file")
    return path


def _weights(values: Sequence[str] | None, count: int) -> list[float] | None:
    if not values:
        return None
    try:
        weights = [float(p) for value in values for p in value.replace(",", " ").split()]
    except ValueError:
        raise UsageError(f"--weights: {' '.join(values)!r} is not a list of numbers (e.g. 0.7 0.3)") from None
    if len(weights) != count:
        raise UsageError(f"--weights: {len(weights)} weights for {count} styles; give one per style")
    return weights


def _format(args: argparse.Namespace) -> str:
    from_suffix = FORMAT_BY_SUFFIX.get(Path(args.output).suffix.lower())
    if args.format and from_suffix and args.format != from_suffix:
        raise UsageError(f"--format {args.format} contradicts the output file name {args.output}")
    return str(args.format or from_suffix or "png")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "alpha": args.alpha,
        "preserve_color": args.preserve_color,
        "max_side": args.max_side,
        "style_fit": args.style_fit,
    }


def _progress(quiet: bool) -> Callable[[Any], None] | None:
    if quiet:
        return None
    return lambda status: sys.stderr.write(f"{status.state}: {status.done}/{status.total} {status.unit}\n")


def run_transfer(client: Client, args: argparse.Namespace) -> bytes:
    """stylize / interpolate / multistyle: the sync endpoint, or a job beyond the server's sync ``max_side``."""
    mode = args.command
    styles = _styles(args, 1 if mode == "stylize" else 2)
    if mode == "stylize" and len(styles) != 1:
        raise UsageError(f"stylize takes exactly one style, got {len(styles)}")
    fmt = _format(args)
    extra: dict[str, Any] = {}
    if mode == "interpolate":
        extra["weights"] = _weights(args.weights, len(styles)) or [1.0] * len(styles)
    if mode == "multistyle":
        extra["masks"] = [_path(m, "mask") for m in args.masks] if args.masks else None
        extra["labels"] = _path(args.labels, "labels") if args.labels else None
        extra["feather"] = args.feather
    content = _path(args.content, "content")
    options = {**_options(args), "format": fmt}
    if args.max_side is not None and args.max_side > int(client.info()["limits"]["max_side"]):
        job = client.submit(content, styles, mode=mode, **extra, **options)
        job.wait(on_progress=_progress(args.quiet), poll_s=POLL_S)
        return job.result().data
    if mode == "stylize":
        return client.stylize(content, styles[0], **options).data
    if mode == "interpolate":
        return client.interpolate(content, styles, extra.pop("weights"), **options).data
    return client.multistyle(content, styles, **extra, **options).data


def run_video(client: Client, args: argparse.Namespace) -> bytes:
    styles = _styles(args, 1)
    job = client.submit_video(
        _path(args.video, "video"), styles, weights=_weights(args.weights, len(styles)), smoothing=args.smoothing,
        **_options(args),
    )  # fmt: skip
    try:
        job.wait(on_progress=_progress(args.quiet), poll_s=POLL_S)
    except KeyboardInterrupt:
        job.cancel()  # the server would otherwise compute every frame for nobody
        raise
    return job.result().data


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stya2k-client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=os.environ.get("STYA2K_URL", "http://127.0.0.1:8000"),
                        help="the server [env STYA2K_URL]")  # fmt: skip
    parser.add_argument("--api-key", default=os.environ.get("STYA2K_API_KEY"), help="[env STYA2K_API_KEY]")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request attempt")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("styles", help="list the server's preset styles")
    sub.add_parser("info", help="the server's model, device and limits (GET /v1/info)")
    for command, what in COMMANDS.items():
        cmd = sub.add_parser(command, help=what)
        cmd.add_argument(
            "video" if command == "video" else "content", help="the clip" if command == "video" else "the photo"
        )
        cmd.add_argument("styles", nargs="*", metavar="STYLE", help="style image files")
        cmd.add_argument("--style-preset", action="append", metavar="NAME", help="a preset style (repeatable)")
        cmd.add_argument("-o", "--output", required=True, help="output file")
        cmd.add_argument("--alpha", type=float, default=1.0, help="style strength 0..1")
        cmd.add_argument("--preserve-color", action="store_true", help="keep the content's colours")
        cmd.add_argument("--max-side", type=int, default=None, help="longest output side in px")
        cmd.add_argument("--style-fit", choices=("crop", "whole"), default=None, help="default: the server's")
        cmd.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
        if command in ("interpolate", "video"):
            cmd.add_argument("--weights", nargs="+", metavar="W", help="one weight >= 0 per style; default equal")
        if command == "video":
            cmd.add_argument("--smoothing", type=float, default=None, help="temporal smoothing 0..0.95")
        else:
            cmd.add_argument("--format", choices=("png", "jpeg", "webp"), default=None, help="default: from -o")
        if command == "multistyle":
            regions = cmd.add_mutually_exclusive_group(required=True)
            regions.add_argument("--masks", nargs="+", metavar="MASK", help="one grayscale mask per style")
            regions.add_argument("--labels", metavar="FILE", help="label map: pixel value i -> style i")
            cmd.add_argument("--feather", type=float, default=8.0, help="soft border width in px")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        with Client(args.url, api_key=args.api_key, timeout_s=args.timeout) as client:
            if args.command in ("styles", "info"):
                body = client.styles() if args.command == "styles" else client.info()
                sys.stdout.write(json.dumps(body, indent=1, ensure_ascii=False) + "\n")
                return EXIT_OK
            data = run_video(client, args) if args.command == "video" else run_transfer(client, args)
    except UsageError as exc:
        parser.exit(EXIT_USAGE, f"stya2k-client {args.command}: error: {exc}\n")
    except (StyA2KError, ValueError) as exc:  # ValueError: an input the client refuses (unreadable file, ...)
        sys.stderr.write(f"stya2k-client {args.command}: failed: {exc}\n")
        return EXIT_FAILURE
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    if not args.quiet:
        sys.stderr.write(f"wrote {out} ({len(data)} bytes)\n")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
