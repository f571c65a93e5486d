"""The ``stya2k`` command line: serve, stylize, interpolate, multistyle, video, export-graph, train, eval.

Transfers run the model in this process (``--weights``, ``--device``) or, with ``--url``, on a running
server through :mod:`service.client`. Local mode uses the service's own decode / resize / encode path
(:func:`service.pipeline.run_transfer`) and engine, so a local result equals the server's.

A large output (``--max-side`` above the tile side) is computed tile by tile with a progress bar: locally with
the engine's tile steps, against a server through its jobs API when the side exceeds what the server's sync
endpoints allow (``GET /v1/info`` limits). A video is stylized frame by frame into an H.264 mp4 with a progress bar
over its frames: locally with :mod:`service.video` (the server's own pipeline, with its STYA2K_VIDEO_* limits read
from the environment), with ``--url`` as a video job.

Exit codes: 0 success, 1 failure (bad image, model or server error), 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from service.contract import (
    ALPHA,
    DEFAULT_ALPHA,
    DEFAULT_FEATHER,
    FEATHER,
    MAX_SIDE,
    SMOOTHING,
    Mode,
    OutputFormat,
    Range,
    StyleFit,
    TransferRequest,
    VideoRequest,
)

if TYPE_CHECKING:  # imported when used: the model package loads torch, and --help must not wait for it
    from service.pipeline import EngineRunner
    from service.settings import Settings
    from service.video import VideoOutcome

log = logging.getLogger("service.cli")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
FORMAT_BY_SUFFIX = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
SUFFIX_BY_FORMAT = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
DELEGATED = {"train": "training.train", "eval": "training.evaluate"}
LOCAL_MAX_SIDE = 8192  # local mode: the only limit is the machine's memory
JOB_POLL_S = 0.5  # --url with a job: seconds between two status polls
VIDEO_SUFFIXES = (".mp4", ".m4v")  # the video command writes an H.264 mp4
VIDEO_ENV_PREFIX = "STYA2K_VIDEO_"  # a server's video limits; the local video command honours them too
FRAME_BAR_LINES = 20  # off a terminal a video's frame bar writes about this many lines, not one per frame


class UsageError(Exception):
    """Bad command-line input: exit code 2."""


class Failure(Exception):
    """The work could not be done: exit code 1."""


# ---------------------------------------------------------------------------------------------- backends
@dataclass(frozen=True)
class Output:
    data: bytes
    milliseconds: float
    detail: str = ""  # a video's frames, rate, size and audio, for the summary line


StepHook = Callable[[int, int], None]  # (steps done, steps in all) of one large transfer, or a video's frames


class Backend(Protocol):
    def run(self, transfer: TransferRequest, on_progress: StepHook | None = None) -> Output: ...

    def run_video(self, request: VideoRequest, on_progress: StepHook | None = None) -> Output: ...

    def close(self) -> None: ...


class LocalBackend:
    """The model in this process: the service's own :func:`~service.pipeline.run_transfer` (a video's
    :mod:`service.video` pipeline) and engine."""

    def __init__(
        self,
        weights: str | None,
        device: str,
        threads: int,
        tile_px: int,
        tile_margin_px: int,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        from service.engine import Engine
        from service.metrics import ServiceMetrics
        from service.settings import Settings, SettingsError

        try:
            self.settings = Settings(
                weights=weights,
                device=device,
                threads=threads,
                warmup=False,
                max_side=LOCAL_MAX_SIDE,
                max_input_pixels=400_000_000,
                tile_px=tile_px,
                tile_margin_px=tile_margin_px,
                **(extra or {}),
            )
        except SettingsError as exc:
            raise UsageError(_as_flags(str(exc))) from None
        self.engine = Engine(self.settings, ServiceMetrics())
        try:
            self.engine.load()
        except Exception as exc:  # missing / corrupt weights, no CUDA, ...: a clear one-line failure
            raise Failure(f"cannot load the model: {exc}") from None

    def run(self, transfer: TransferRequest, on_progress: StepHook | None = None) -> Output:
        from service.errors import ServiceError
        from service.pipeline import EngineRunner, run_transfer

        started = time.monotonic()
        runner = EngineRunner(self.engine, on_progress)  # tile steps when the output needs tiling
        try:
            outcome = asyncio.run(run_transfer(transfer, self.settings, runner))
        except ServiceError as exc:
            raise Failure(exc.message) from None
        return Output(outcome.body, (time.monotonic() - started) * 1000)

    def run_video(self, request: VideoRequest, on_progress: StepHook | None = None) -> Output:
        """:func:`service.video.prepare_video` + :func:`~service.video.complete_video` in this process."""
        from service.errors import ServiceError
        from service.pipeline import EngineRunner

        started = time.monotonic()
        runner = EngineRunner(self.engine, on_progress)  # on_progress hears of the frames
        try:
            outcome = asyncio.run(_stylize_video(request, self.settings, runner))
        except ServiceError as exc:
            raise Failure(exc.message) from None
        fields = {"width": outcome.width, "height": outcome.height, **outcome.details()}
        return Output(outcome.body, (time.monotonic() - started) * 1000, video_detail(fields))

    def close(self) -> None:
        return None


async def _stylize_video(request: VideoRequest, settings: Settings, runner: EngineRunner) -> VideoOutcome:
    """Probe and prepare, then every frame, as a video job does (a bad video fails before any model work)."""
    from service.video import complete_video, prepare_video

    prepared = await prepare_video(request, settings, runner)
    return await complete_video(prepared, runner, runner.on_progress)


def video_settings(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The STYA2K_VIDEO_* variables of ``env`` (default the process's) as Settings fields, for the local video
    command: a server's video limits (and their messages, which name the variables) hold locally too."""
    from service.settings import Settings, SettingsError

    env = os.environ if env is None else env
    wanted = {key: value for key, value in env.items() if key.startswith(VIDEO_ENV_PREFIX)}
    try:
        parsed = Settings.from_env(wanted)
    except SettingsError as exc:
        raise UsageError(f"environment: {exc}") from None
    return {f.name: getattr(parsed, f.name) for f in dataclasses.fields(Settings) if f.name.startswith("video_")}


def video_detail(fields: Mapping[str, Any]) -> str:
    """A video result in a few words, from the job view's ``result`` fields: "10 frames at 12 fps, 64x48, ..."."""
    frames = fields.get("frames", "?")
    parts = [f"{frames} frame{'' if frames == 1 else 's'} at {float(fields.get('fps') or 0):g} fps"]
    if fields.get("width") and fields.get("height"):
        parts.append(f"{fields['width']}x{fields['height']}")
    parts.append(f"audio {fields.get('audio', 'none')}")
    if fields.get("smoothing"):
        parts.append(f"smoothing {fields['smoothing']:g}")
    return ", ".join(parts)


def _as_flags(message: str) -> str:
    """A settings message in the command line's words: STYA2K_TILE_PX -> --tile-px, STYA2K_WEIGHTS -> --checkpoint."""
    message = message.replace("STYA2K_WEIGHTS", "--checkpoint")
    return re.sub(r"STYA2K_([A-Z0-9_]+)", lambda m: "--" + m.group(1).lower().replace("_", "-"), message)


class RemoteBackend:
    """A running server, through the Python client (retries on 429/503)."""

    def __init__(self, url: str, api_key: str | None, timeout_s: float) -> None:
        from service.client import Client

        self.client = Client(url, api_key=api_key, timeout_s=timeout_s)
        self._sync_max_side: int | None = None

    def sync_max_side(self) -> int:
        """The largest side the server's sync endpoints take (``GET /v1/info`` limits; asked once)."""
        if self._sync_max_side is None:
            self._sync_max_side = int(self.client.info()["limits"]["max_side"])
        return self._sync_max_side

    def run(self, transfer: TransferRequest, on_progress: StepHook | None = None) -> Output:
        from service.client import StyA2KError

        options: dict[str, Any] = {
            "alpha": transfer.alpha,
            "preserve_color": transfer.preserve_color,
            "max_side": transfer.max_side,
            "format": str(transfer.format),
            "style_fit": str(transfer.style_fit) if transfer.style_fit is not None else None,  # None: the server's
        }
        started = time.monotonic()
        try:
            if transfer.max_side is not None and transfer.max_side > self.sync_max_side():
                return self._run_job(transfer, options, on_progress, started)
            if transfer.mode is Mode.stylize:
                result = self.client.stylize(transfer.content, transfer.styles[0], **options)
            elif transfer.mode is Mode.interpolate:
                result = self.client.interpolate(transfer.content, transfer.styles, transfer.weights or [], **options)
            else:
                result = self.client.multistyle(
                    transfer.content,
                    transfer.styles,
                    masks=transfer.masks,
                    labels=transfer.labels,
                    feather=transfer.feather,
                    **options,
                )
        except StyA2KError as exc:
            raise Failure(str(exc)) from None
        elapsed = result.total_ms if result.total_ms is not None else (time.monotonic() - started) * 1000
        return Output(result.data, elapsed)

    def _run_job(
        self, transfer: TransferRequest, options: dict[str, Any], on_progress: StepHook | None, started: float
    ) -> Output:
        """Beyond the sync endpoints' max_side: submit a job (``POST /v1/jobs``), poll it, fetch the result."""
        job = self.client.submit(
            transfer.content,
            transfer.styles,
            mode=str(transfer.mode),
            weights=transfer.weights,
            masks=transfer.masks,
            labels=transfer.labels,
            feather=transfer.feather if transfer.mode is Mode.multistyle else None,
            **options,
        )
        log.info("job %s submitted", job.id)
        hook = (lambda status: on_progress(status.done, status.total)) if on_progress is not None else None
        job.wait(on_progress=hook, poll_s=JOB_POLL_S)
        return Output(job.result().data, (time.monotonic() - started) * 1000)

    def run_video(self, request: VideoRequest, on_progress: StepHook | None = None) -> Output:
        """A video job (``POST /v1/jobs`` with a video field): submit, poll the frames, fetch the mp4; an
        interrupted wait cancels the job."""
        from service.client import StyA2KError

        started = time.monotonic()
        try:
            job = self.client.submit_video(
                request.video,
                request.styles,
                weights=request.weights if request.mode is Mode.interpolate else None,
                alpha=request.alpha,
                preserve_color=request.preserve_color,
                max_side=request.max_side,
                style_fit=str(request.style_fit) if request.style_fit is not None else None,  # None: the server's
                smoothing=request.smoothing or None,
            )
            log.info("video job %s submitted", job.id)
            hook = (lambda status: on_progress(status.done, status.total)) if on_progress is not None else None
            try:
                done = job.wait(on_progress=hook, poll_s=JOB_POLL_S)
            except KeyboardInterrupt:
                with contextlib.suppress(StyA2KError):
                    job.cancel()  # the server would otherwise compute every frame for nobody
                raise
            video = job.result()
        except StyA2KError as exc:
            raise Failure(str(exc)) from None
        return Output(video.data, (time.monotonic() - started) * 1000, video_detail(done.result or {}))

    def close(self) -> None:
        self.client.close()


def open_backend(args: argparse.Namespace, extra: Mapping[str, Any] | None = None) -> Backend:
    """``--url``: the server; else the model in this process, with ``extra`` settings."""
    if args.url:
        return RemoteBackend(args.url, args.api_key, args.timeout)
    return LocalBackend(args.checkpoint, args.device, args.threads, args.tile_px, args.tile_margin_px, extra)


def tile_label(step: int, total: int) -> str:
    """What step ``step`` (1-based) of a tiled transfer does: a statistics pass over every tile, then the
    transfer pass (model.tiling.TiledStylizer)."""
    tiles = total // 2
    if total < 2 or total % 2:
        return f"step {step}/{total}"
    which = "statistics" if step <= tiles else "transfer"
    return f"{which} pass, tile {(step - 1) % tiles + 1}/{tiles}"


def frame_label(step: int, total: int) -> str:
    """A video's bar: the count says which frame."""
    return "frames"


class StepBar:
    """A progress bar over one large transfer's tile steps (or a video's frames: ``label=frame_label``), fed
    (done, total) reports (a poll may skip some). ``lines``: off a terminal, write about this many lines in all
    rather than one per step."""

    def __init__(self, enabled: bool, label: Callable[[int, int], str] = tile_label, lines: int | None = None) -> None:
        self.enabled = enabled
        self.label = label
        self.lines = lines
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        from model.progress import Progress

        if self.bar is None or self.bar.total != total:  # a queued job reports 0/1 until its tiles are known
            every = max(1, total // self.lines) if self.lines else 1
            self.bar = Progress(total, sys.stderr, enabled=self.enabled, every=every)  # nothing for a 1-step job
        while self.bar.done < min(done, total):
            self.bar.step(self.label(self.bar.done + 1, total))


# ---------------------------------------------------------------------------------------------- inputs
def image_files(path: Path, what: str) -> list[Path]:
    """A file, or every image of a folder (not recursive, sorted); usage error when there is none."""
    if path.is_file():
        return [path]
    if path.is_dir():
        from model.imageio import IMAGE_SUFFIXES  # here: the model package loads torch, --help must not wait

        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise UsageError(f"{what} folder {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return found
    raise UsageError(f"{what} {path} does not exist")


def read_file(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise UsageError(f"{what} {path} does not exist or is not a file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise Failure(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def preset_styles(names: Sequence[str] | None) -> list[tuple[str, bytes]]:
    """``--style-preset NAME``s as (name, the painting's bytes), from this install's presets (service/presets):
    locally and with ``--url`` alike, where the bytes are uploaded and the server's style cache keys them by
    their hash, so it is the same as the server's own preset."""
    from service.errors import InvalidParameter
    from service.presets import library

    try:
        return [(name, library().image(name, "--style-preset")) for name in names or ()]
    except InvalidParameter as exc:
        raise UsageError(exc.message) from None


def style_inputs(files: Sequence[str], names: Sequence[str] | None) -> list[bytes]:
    """The style image files, then the presets (the order weights and masks follow)."""
    return [read_file(Path(f), "style") for f in files] + [data for _, data in preset_styles(names)]


def output_format(requested: str | None, out: Path, is_folder: bool) -> OutputFormat:
    """--format, else the output file's suffix, else png; a conflict between the two is a usage error."""
    from_suffix = None if is_folder else FORMAT_BY_SUFFIX.get(out.suffix.lower())
    if not is_folder and out.suffix and from_suffix is None:
        raise UsageError(f"output {out}: unknown suffix {out.suffix!r}; use .png, .jpg, .jpeg or .webp")
    if requested and from_suffix and requested != from_suffix:
        raise UsageError(f"--format {requested} contradicts the output file name {out.name}")
    return OutputFormat(requested or from_suffix or OutputFormat.png)


def parse_weights(values: Sequence[str]) -> list[float]:
    """``--weights 0.7 0.3`` or ``--weights 0.7,0.3``."""
    parts = [p for value in values for p in value.replace(",", " ").split()]
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise UsageError(f"--weights: {' '.join(values)!r} is not a list of numbers (e.g. 0.7 0.3)") from None


def write_output(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as exc:
        raise Failure(f"cannot write {path}: {exc.strerror or exc}") from None


# ---------------------------------------------------------------------------------------------- commands
def run_stylize(args: argparse.Namespace) -> int:
    contents = image_files(Path(args.content), "content")
    # Each style as (its name in output file names, in messages, a reader of its bytes): files, then presets.
    styles: list[tuple[str, str, Callable[[], bytes]]] = []
    if args.style is not None:
        files = image_files(Path(args.style), "style")
        styles += [(p.stem, p.name, lambda p=p: read_file(p, "style")) for p in files]
    styles += [(name, name, lambda data=data: data) for name, data in preset_styles(args.style_preset)]
    if not styles:
        raise UsageError("give a STYLE image (or folder) or --style-preset NAME")
    out = Path(args.output)
    many = Path(args.content).is_dir() or (args.style is not None and Path(args.style).is_dir()) or len(styles) > 1
    if many and out.exists() and not out.is_dir():
        raise UsageError(f"-o {out} is a file; with a folder of inputs -o must name a folder")
    fmt = output_format(args.format, out, is_folder=many)
    pairs = [(c, s) for c in contents for s in styles]
    backend = open_backend(args)
    from model.progress import Progress

    progress = Progress(len(pairs), sys.stderr, enabled=not args.quiet)
    failures: list[str] = []
    try:
        for content_path, (style_stem, style_name, style_bytes) in pairs:
            target = out / f"{content_path.stem}__{style_stem}{SUFFIX_BY_FORMAT[fmt]}" if many else out
            transfer = TransferRequest(
                mode=Mode.stylize,
                content=read_file(content_path, "content"),
                styles=[style_bytes()],
                **_options(args, fmt),
            )
            try:
                # One pair: a bar over its tile steps when it is large; many: the bar over the pairs only.
                result = backend.run(transfer, None if many else StepBar(not args.quiet))
            except Failure as exc:
                if not many:
                    raise
                failures.append(f"{content_path.name} x {style_name}: {exc}")
                progress.step(f"FAILED {content_path.name} x {style_name}")
                continue
            write_output(target, result.data)
            progress.step(target.name)
            if not many and not args.quiet:
                sys.stderr.write(f"wrote {target} ({result.milliseconds:.0f} ms)\n")
    finally:
        backend.close()
    if many and not args.quiet:
        sys.stderr.write(f"wrote {len(pairs) - len(failures)} of {len(pairs)} images to {out}\n")
    for line in failures:
        sys.stderr.write(f"error: {line}\n")
    return EXIT_FAILURE if failures else EXIT_OK


def _options(args: argparse.Namespace, fmt: OutputFormat) -> dict[str, Any]:
    """The options every transfer command shares, as TransferRequest fields."""
    return {
        "alpha": args.alpha,
        "preserve_color": args.preserve_color,
        "max_side": args.max_side,
        "format": fmt,
        "style_fit": args.style_fit,
    }


def _single_transfer(args: argparse.Namespace, transfer_for: Callable[[OutputFormat], TransferRequest]) -> int:
    out = Path(args.output)
    if out.is_dir():
        raise UsageError(f"-o {out} is a folder; give the output file name")
    transfer = transfer_for(output_format(args.format, out, is_folder=False))
    backend = open_backend(args)
    try:
        result = backend.run(transfer, StepBar(not args.quiet))
    finally:
        backend.close()
    write_output(out, result.data)
    if not args.quiet:
        sys.stderr.write(f"wrote {out} ({result.milliseconds:.0f} ms)\n")
    return EXIT_OK


def _check_style_count(args: argparse.Namespace, command: str, least: int = 2) -> int:
    """The number of styles (files and --style-preset names); a usage error below ``least``."""
    count = len(args.styles) + len(args.style_preset or ())
    if count < least:
        plural = "s" if least > 1 else ""
        raise UsageError(f"{command} needs at least {least} style{plural} (STYLE files, --style-preset), got {count}")
    return count


def style_weights(values: Sequence[str] | None, count: int) -> list[float]:
    """``--weights`` for ``count`` styles (default equal): one per style, >= 0, not all zero."""
    weights = parse_weights(values) if values else [1.0] * count
    if len(weights) != count:
        raise UsageError(f"--weights: {len(weights)} weights for {count} styles; give one per style")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise UsageError("--weights must be >= 0 and not all zero")
    return weights


def run_interpolate(args: argparse.Namespace) -> int:
    weights = style_weights(args.weights, _check_style_count(args, "interpolate"))

    def transfer(fmt: OutputFormat) -> TransferRequest:
        return TransferRequest(
            mode=Mode.interpolate,
            content=read_file(Path(args.content), "content"),
            styles=style_inputs(args.styles, args.style_preset),
            **_options(args, fmt),
            weights=weights,
        )

    return _single_transfer(args, transfer)


def run_multistyle(args: argparse.Namespace) -> int:
    count = _check_style_count(args, "multistyle")
    if args.masks and len(args.masks) != count:
        raise UsageError(f"--masks: {len(args.masks)} masks for {count} styles; give one per style")

    def transfer(fmt: OutputFormat) -> TransferRequest:
        return TransferRequest(
            mode=Mode.multistyle,
            content=read_file(Path(args.content), "content"),
            styles=style_inputs(args.styles, args.style_preset),
            **_options(args, fmt),
            masks=[read_file(Path(m), "mask") for m in args.masks] if args.masks else None,
            labels=read_file(Path(args.labels), "labels") if args.labels else None,
            feather=args.feather,
        )

    return _single_transfer(args, transfer)


def run_video(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.is_dir():
        raise UsageError(f"-o {out} is a folder; give the output file name")
    if out.suffix and out.suffix.lower() not in VIDEO_SUFFIXES:
        raise UsageError(f"output {out}: the result is an H.264 mp4; name it .mp4 (not {out.suffix})")
    count = _check_style_count(args, "video", least=1)
    if count == 1 and args.weights:
        raise UsageError("--weights blends 2..N styles; give several styles, or leave --weights out")
    many = count > 1
    request = VideoRequest(
        mode=Mode.interpolate if many else Mode.stylize,
        video=read_file(Path(args.video), "video"),
        styles=style_inputs(args.styles, args.style_preset),
        alpha=args.alpha,
        preserve_color=args.preserve_color,
        max_side=args.max_side,
        weights=style_weights(args.weights, count) if many else None,
        style_fit=args.style_fit,
        smoothing=args.smoothing,
    )
    extra = None if args.url else video_settings()
    if extra is not None:
        _check_local_video(request, extra)
    backend = open_backend(args, extra)
    try:
        result = backend.run_video(request, StepBar(not args.quiet, label=frame_label, lines=FRAME_BAR_LINES))
    finally:
        backend.close()
    write_output(out, result.data)
    if not args.quiet:
        sys.stderr.write(f"wrote {out} ({result.detail}; {result.milliseconds:.0f} ms)\n")
    return EXIT_OK


def _check_local_video(request: VideoRequest, settings: Mapping[str, Any]) -> None:
    """Before the model loads: the side against STYA2K_VIDEO_MAX_SIDE (usage error) and the video's probe (a file
    that is no video, or over a limit, fails at once; prepare_video probes it again, which costs a demux)."""
    from service.errors import ServiceError
    from service.video import VideoLimits, probe

    limit = settings["video_max_side"]
    if request.max_side is not None and request.max_side > limit:
        raise UsageError(
            f"--max-side {request.max_side} exceeds the video limit of {limit} px (frames are not tiled; "
            "STYA2K_VIDEO_MAX_SIDE raises it, up to 4096)"
        )
    limits = VideoLimits(
        max_bytes=settings["video_max_bytes"],
        max_seconds=settings["video_max_seconds"],
        max_frames=settings["video_max_frames"],
        max_input_pixels=settings["video_max_input_pixels"],
    )
    try:
        probe(request.video, limits)
    except ServiceError as exc:
        raise Failure(exc.message) from None
    except Exception as exc:  # FFmpeg on odd input, as prepare_video words it: bad input, not a crash
        raise Failure(f"the video could not be read ({type(exc).__name__}: {exc})") from None


def run_serve(args: argparse.Namespace) -> int:
    from service.server import serve
    from service.settings import Settings, SettingsError

    overrides = {name: getattr(args, name) for name in serve_flags() if getattr(args, name) is not None}
    try:
        settings = Settings.from_env().replace(**overrides)
    except SettingsError as exc:
        raise UsageError(f"configuration: {exc}") from None
    return serve(settings)


def run_export_graph(args: argparse.Namespace) -> int:
    """``stya2k export-graph``: the network as ONNX graphs (model/graphs.py), by default into the cache folder the
    service's graph backends read, so a later ``stya2k serve`` starts without an export. ``--int8``: also the
    int8 set (model/quantize.py) with its quality record; ``--triton DIR``: a Triton model repository of them."""
    import json

    from model.checkpoint import CheckpointError, default_cache_dir, load_model, sha256_file
    from model.encoder import EncoderWeightsError
    from model.graphs import GraphSet, describe, export_graphs
    from service.backends import missing_packages
    from service.backends.graph_backend import graph_folder

    missing = missing_packages("onnxruntime")
    if missing:
        raise Failure(f"exporting needs {', '.join(missing)}: pip install 'stya2k-serve[onnx]'")
    if args.int8 and not args.calibration:
        raise UsageError("--int8 needs --calibration DIR (a folder with content/ and style/ images)")
    import model

    path = Path(args.weights) if args.weights else model.DEFAULT_WEIGHTS
    try:
        net = load_model(path)
    except (OSError, CheckpointError, EncoderWeightsError, ValueError) as exc:
        raise Failure(f"cannot load {path}: {exc}") from None
    digest = sha256_file(path)
    folder = Path(args.out) if args.out else graph_folder(default_cache_dir(), digest)
    if GraphSet(folder).complete() and not args.force:
        log.info("graphs already exported in %s (--force exports again)", folder)
        graphs = GraphSet(folder)
    else:
        started = time.monotonic()
        try:
            graphs = export_graphs(net, folder, digest, opset=args.opset)
        except ValueError as exc:
            raise Failure(str(exc)) from None
        log.info("exported in %.1f s", time.monotonic() - started)
    report: dict[str, Any] = describe(graphs)
    if args.int8:
        graphs, report["int8"] = _quantize(graphs, args)
    if args.triton:
        from model.triton import write_repository

        report["triton"] = [str(p) for p in write_repository(graphs, Path(args.triton), args.triton_device)]
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return EXIT_OK


def _quantize(fp32: Any, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """``export-graph --int8``: the int8 set of ``fp32`` (GraphSet) calibrated on --calibration (cached by the
    set's sha256), and its quality against float32 on held-out pairs of the same folder (quality.json)."""
    import json

    from model import quantize
    from model.graphs import GraphSet, describe
    from service.backends.graph_backend import int8_folder
    from service.backends.onnx_runtime import OnnxRuntimeBackend

    root = Path(args.calibration)
    try:
        calibration = quantize.calibration_set(root, args.calibration_count, args.calibration_side)
        held_out = quantize.calibration_set(root, 8, args.calibration_side, exclude=calibration)
    except (OSError, ValueError) as exc:
        raise Failure(f"calibration images: {exc}") from None
    digest = calibration.digest()
    folder = int8_folder(fp32.folder, digest)

    def stages(graphs: GraphSet) -> Any:
        return OnnxRuntimeBackend(Path("."), export=False).open_graphs(graphs)

    float32 = stages(fp32)
    if GraphSet(folder).complete() and not args.force:
        log.info("int8 graphs of this calibration set already in %s (--force quantizes again)", folder)
    else:
        started = time.monotonic()
        quantize.quantize_graphs(fp32, folder, float32, calibration, digest)
        log.info("quantized in %.1f s", time.monotonic() - started)
    int8 = GraphSet(folder)
    lpips = None
    if args.lpips and Path(args.lpips).is_dir():
        from model.lpips import LPIPS

        lpips = LPIPS.from_folder(args.lpips).eval()
    else:
        log.warning("no LPIPS weights (--lpips %s): the quality record has no LPIPS, so STYA2K_BACKEND=auto will "
                    "not pick the int8 graphs", args.lpips)
    quality = quantize.measure_quality(float32, stages(int8), held_out, lpips)
    quality["calibration_sha256"] = digest
    (folder / quantize.QUALITY_FILE).write_text(json.dumps(quality, indent=2) + "\n")
    summary = {k: v for k, v in quality.items() if k != "per_pair"}
    return int8, {"graphs": describe(int8), "quality": summary}


def _default_lpips() -> str:
    """Where the LPIPS weights are when ../shared is beside the project (the quality harness's default)."""
    return str(Path(__file__).resolve().parents[2] / "shared" / "weights" / "lpips")


def run_delegated(command: str, argv: Sequence[str]) -> int:
    """``stya2k train|eval ...``: the model package's own parser and entry point, imported only now."""
    module_name = DELEGATED[command]
    try:
        module = importlib.import_module(module_name)
        add_arguments = module.add_arguments
        run = module.run
    except Exception as exc:  # missing module, broken import, missing entry points
        sys.stderr.write(f"stya2k {command}: unavailable: cannot import {module_name} ({type(exc).__name__}: {exc})\n")
        return EXIT_FAILURE
    parser = argparse.ArgumentParser(prog=f"stya2k {command}", description=(module.__doc__ or "").strip() or None)
    add_arguments(parser)
    args = parser.parse_args(list(argv))  # exits 2 on usage errors, 0 on --help
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(run(args) or 0)


# ---------------------------------------------------------------------------------------------- parser


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def serve_flags() -> tuple[str, ...]:
    """``stya2k serve`` has one flag per Settings field (help text from the field itself)."""
    from service.settings import Settings

    return tuple(field.name for field in dataclasses.fields(Settings))


def _add_serve_parser(sub: Any) -> None:
    from service.settings import Settings

    parser = sub.add_parser(
        "serve",
        help="run the HTTP service (docs/API.md)",
        description="Run the HTTP service. Every flag overrides its STYA2K_* environment variable, which "
        "overrides the default shown.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for field in dataclasses.fields(Settings):
        name = field.name
        flag = "--" + name.replace("_", "-")
        help_text = f"{Settings.help(name)} [env STYA2K_{name.upper()}; default {field.default!r}]"
        kind = str(field.type)
        if kind == "bool":
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            convert = {"int": int, "float": float}.get(kind, str)
            parser.add_argument(flag, dest=name, type=convert, default=None, metavar=name.upper(), help=help_text)
    parser.set_defaults(handler=run_serve)


def _number_in(allowed: Range, kind: type[float] | type[int]) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` within ``allowed`` (the API's own range, service.contract)."""
    noun = "an integer" if kind is int else "a number"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if allowed.high is None and value < allowed.low:
            raise argparse.ArgumentTypeError(f"{value} is too small; at least {allowed.low:g}")
        if not allowed.contains(value):
            raise argparse.ArgumentTypeError(f"{text} is out of range; allowed {allowed.text()}")
        return value

    return parse


IMAGE_MAX_SIDE_HELP = (
    f"longest output side in px, at least {MAX_SIDE.low:g} (never upscaled); default 512. Larger than the tile "
    "side: computed tile by tile with a progress bar; with --url beyond the server's STYA2K_MAX_SIDE: run as a job "
    "(POST /v1/jobs, up to its STYA2K_JOBS_MAX_SIDE)"
)
VIDEO_MAX_SIDE_HELP = (
    f"longest side of the output frames in px, at least {MAX_SIDE.low:g} (never upscaled; both sides rounded down "
    "to even numbers); default 512; at most STYA2K_VIDEO_MAX_SIDE (1024; frames are not tiled), with --url the "
    "server's"
)


def _add_transfer_options(parser: argparse.ArgumentParser, video: bool = False) -> None:
    """The options of the transfer commands; ``video``: the video command's (an mp4 out, no tiles, smoothing)."""
    # default=SUPPRESS: a required option has no default, so the help must not show "(default: None)".
    parser.add_argument(
        "-o", "--output", required=True, metavar="OUT", default=argparse.SUPPRESS,
        help="output video file, an H.264 mp4 (.mp4; required)" if video else "output image file (required)",
    )  # fmt: skip
    parser.add_argument(
        "--alpha",
        type=_number_in(ALPHA, float),
        default=DEFAULT_ALPHA,
        help="style strength: 0 = content only, 1 = full style",
    )
    parser.add_argument("--preserve-color", action="store_true", help="keep the content's colours (luminance transfer)")
    parser.add_argument(
        "--max-side",
        type=_number_in(MAX_SIDE, int),
        default=None,
        help=VIDEO_MAX_SIDE_HELP if video else IMAGE_MAX_SIDE_HELP,
    )
    if not video:
        parser.add_argument(
            "--format",
            choices=[f.value for f in OutputFormat],
            default=None,
            help="output encoding; default: from OUT's suffix",
        )
    parser.add_argument(
        "--style-fit",
        choices=[fit.value for fit in StyleFit],
        default=None,
        help="how each style image is prepared: crop = a centred square (a wide image loses its sides), whole = "
        "the whole image (long side to the style size); default: crop, with --url the server's STYA2K_STYLE_FIT",
    )
    if video:
        parser.add_argument(
            "--smoothing",
            type=_number_in(SMOOTHING, float),
            default=0.0,
            help=f"temporal smoothing strength ({SMOOTHING.text()}): each output frame is blended with the previous "
            "one along the optical flow; less flicker, some ghosting on fast motion; 0 = off",
        )
    parser.add_argument(
        "--style-preset", action="append", metavar="NAME", default=None,
        help="a preset painting as a style (repeatable; after the STYLE files, in order): starry_night, "
        "great_wave, ... (the list: GET /v1/styles, or service/presets/presets.json)",
    )  # fmt: skip
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress or summary on stderr")
    _add_where_options(parser, tiles=not video)


def _add_where_options(parser: argparse.ArgumentParser, tiles: bool) -> None:
    where = parser.add_argument_group("where the model runs (default: in this process)")
    where.add_argument(
        "--checkpoint",
        default=None,
        metavar="WEIGHTS",
        help="local: weights file (.pt); default the shipped weights; 'random' = untrained (tests)",
    )
    where.add_argument("--device", default="auto", help="local: auto | cpu | cuda | cuda:N")
    where.add_argument("--threads", type=int, default=0, help="local: torch CPU threads; 0 = torch's default")
    from service.settings import Settings  # torch-free: --help stays fast

    if tiles:
        where.add_argument(
            "--tile-px", type=int, default=Settings.tile_px, help="local: large outputs are computed in square "
            "tiles of this side (a multiple of 64; smaller = less memory, more steps) [STYA2K_TILE_PX of a server]",
        )
        where.add_argument(
            "--tile-margin-px", type=int, default=Settings.tile_margin_px,
            help="local: context computed around each tile (a multiple of 64) [STYA2K_TILE_MARGIN_PX of a server]",
        )
    else:  # a video's frames are never tiled
        parser.set_defaults(tile_px=Settings.tile_px, tile_margin_px=Settings.tile_margin_px)
    where.add_argument("--url", default=None, help="use a running server instead, e.g. http://127.0.0.1:8000")
    where.add_argument(
        "--api-key", default=os.environ.get("STYA2K_API_KEY"), help="server's API key [env STYA2K_API_KEY]"
    )
    where.add_argument("--timeout", type=float, default=120.0, help="server: seconds per request attempt")


def build_parser(prog: str = "stya2k") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="StyA2K Serve: arbitrary style transfer with All-to-Key attention (ICCV 2023).",
        epilog="Run 'stya2k COMMAND --help' for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_serve_parser(sub)

    stylize = sub.add_parser(
        "stylize",
        help="CONTENT in the style of STYLE (files or folders)",
        description="Stylize CONTENT with STYLE. Either may be a folder: every content x style pair is "
        "written into the output folder OUT as CONTENT__STYLE.<format>, with a progress bar.",
        formatter_class=_Formatter,
    )
    stylize.add_argument("content", help="content image, or a folder of them")
    stylize.add_argument("style", nargs="?", help="style image, or a folder of them (or give --style-preset)")
    _add_transfer_options(stylize)
    stylize.set_defaults(handler=run_stylize)

    interpolate = sub.add_parser(
        "interpolate",
        help="CONTENT in a weighted blend of 2..N styles",
        description="Blend the transferred features of several styles with convex weights.",
        formatter_class=_Formatter,
    )
    interpolate.add_argument("content", help="content image")
    interpolate.add_argument("styles", nargs="*", metavar="STYLE", help="2..N style images (with --style-preset)")
    interpolate.add_argument(
        "--weights", nargs="+", metavar="W", help="one weight >= 0 per style (normalised); default equal"
    )
    _add_transfer_options(interpolate)
    interpolate.set_defaults(handler=run_interpolate)

    multistyle = sub.add_parser(
        "multistyle",
        help="each region of CONTENT in its own style (masks or a label map)",
        description="Render each region of CONTENT in its own style, blended softly at the borders.",
        formatter_class=_Formatter,
    )
    multistyle.add_argument("content", help="content image")
    multistyle.add_argument("styles", nargs="*", metavar="STYLE", help="2..N style images (with --style-preset)")
    regions = multistyle.add_mutually_exclusive_group(required=True)
    regions.add_argument("--masks", nargs="+", metavar="MASK", help="one grayscale mask per style (white = region)")
    regions.add_argument("--labels", metavar="FILE", help="label map: pixel value i -> style i")
    multistyle.add_argument(
        "--feather",
        type=_number_in(FEATHER, float),
        default=DEFAULT_FEATHER,
        help=f"soft border width in output px ({FEATHER.text()})",
    )
    _add_transfer_options(multistyle)
    multistyle.set_defaults(handler=run_multistyle)

    video = sub.add_parser(
        "video",
        help="every frame of VIDEO in the style of STYLE (or a blend of styles) -> mp4",
        description="Stylize a clip (mp4, mov, webm, mkv, gif, ...; constant frame rate) frame by frame into an "
        "H.264 mp4 at its frame rate, with its audio track, and a progress bar over the frames. Several styles "
        "are blended (--weights). With --url it runs as a job on the server (POST /v1/jobs); locally the "
        "server's STYA2K_VIDEO_* limits (seconds, frames, bytes, frame size, side) apply from the environment.",
        formatter_class=_Formatter,
    )
    video.add_argument("video", help="input video (mp4, mov, webm, mkv, gif, ...)")
    video.add_argument(
        "styles", nargs="*", metavar="STYLE", help="style image; several: a weighted blend (with --style-preset)"
    )
    video.add_argument(
        "--weights", nargs="+", metavar="W", help="with several styles: one weight >= 0 per style (normalised); "
        "default equal",
    )  # fmt: skip
    _add_transfer_options(video, video=True)
    video.set_defaults(handler=run_video)

    export = sub.add_parser(
        "export-graph",
        help="write the network as ONNX graphs (encoder, transfer, decoder) for other runtimes",
        description="Export the trained network as three ONNX graphs with dynamic sizes: encoder (image -> "
        "relu3_1/4_1/5_1 features), transfer (A2K at the three layers for one style, features padded to the block "
        "grid, with the content's and the style's statistics) and decoder (features -> image), so interpolation, "
        "masks, the style cache and tiling work on any runtime. Each file carries the weights' sha256 and the "
        "model config in its metadata_props (stya2k.*). Default output: the cache folder the service's "
        "onnxruntime backend (STYA2K_BACKEND) reads.",
        formatter_class=_Formatter,
    )
    export.add_argument("--weights", default=None, help="weights file (.pt); default: the shipped weights")
    export.add_argument("--out", default=None, help="output folder; default: the service's graph cache "
                        "(<STYA2K_CACHE or ~/.cache/stya2k>/graphs/<sha256>-...)")  # fmt: skip
    export.add_argument("--opset", type=int, default=18, help="ONNX opset")
    export.add_argument("--force", action="store_true", help="export again when the folder already has the graphs")
    export.add_argument("--int8", action="store_true", help="also quantize the decoder to int8 (ONNX Runtime static "
                        "quantization, QDQ, per-channel weights) into <folder>/int8-<calibration sha256>/, with its "
                        "quality vs float32 on held-out pairs (quality.json); the -int8 backends run these")
    export.add_argument("--calibration", default=None, metavar="DIR", help="calibration images for --int8: "
                        "DIR/content/ and DIR/style/ (the training pool's layout), or a folder of images")
    export.add_argument("--calibration-count", type=int, default=32, help="calibration images (half content)")
    export.add_argument("--calibration-side", type=int, default=384, help="their long side (px)")
    export.add_argument("--lpips", default=_default_lpips(), metavar="DIR",
                        help="LPIPS weights folder for the int8 quality record (auto needs its LPIPS)")
    export.add_argument("--triton", default=None, metavar="DIR", help="also write a Triton model repository of "
                        "the graphs (the int8 ones with --int8) into DIR (docs/DEPLOY.md)")
    export.add_argument("--triton-device", choices=("gpu", "cpu"), default="gpu",
                        help="instance kind in the Triton configs (gpu: TensorRT accelerator, FP16)")
    export.set_defaults(handler=run_export_graph)

    for command, module in DELEGATED.items():
        what = "train the model" if command == "train" else "evaluate weights (quality metrics)"
        sub.add_parser(command, help=f"{what}: options in 'stya2k {command} --help' ({module})", add_help=False)
    return parser


# ---------------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None, prog: str = "stya2k") -> int:
    """``stya2k`` (argv None: exits the process) and ``python -m service`` (prog names it in help and errors)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in DELEGATED:
        return _exit(run_delegated(arguments[0], arguments[1:]), argv)
    parser = build_parser(prog)
    args = parser.parse_args(arguments)  # usage errors exit 2 with argparse's message
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = args.handler(args)
    except UsageError as exc:
        parser.exit(EXIT_USAGE, f"stya2k {args.command}: error: {exc}\n")
    except Failure as exc:
        sys.stderr.write(f"stya2k {args.command}: failed: {exc}\n")
        code = EXIT_FAILURE
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        code = 130
    return _exit(code, argv)


def _exit(code: int, argv: Sequence[str] | None) -> int:
    """As a console script (argv None) exit the process; called from Python, return the code."""
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
