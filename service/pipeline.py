"""The image pipeline: one transfer request, end to end: validate -> decode (off the loop) -> the model -> encode.

(The module is named for its job; "transfer" alone names the network's stage, ``model.StyA2K.transfer``.)
:func:`run_transfer` is the single path of every transfer, whoever asks: the HTTP routes run it with a
:class:`Runner` that decodes in the server's thread pool and queues the job on the batcher; the command
line's local mode runs it with one that calls the engine directly. So a local result equals the server's.
The jobs API (:mod:`service.jobs`) runs the same two halves apart: :func:`prepare_transfer` before it accepts
a job (bad input is refused at once), :func:`complete_transfer` when the job's turn comes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch

from model import StyleFeatures
from service import imaging, regions
from service.batcher import BatchResult
from service.contract import (
    DEFAULT_STYLE_FIT,
    MAX_SIDE,
    Mode,
    OutputFormat,
    StyleFit,
    StyleInput,
    TransferJob,
    TransferRequest,
    normalise_weights,
)
from service.engine import Engine
from service.errors import InvalidImage, InvalidParameter, ServiceError
from service.metrics import ServiceMetrics
from service.settings import Settings
from service.workload import Pace

log = logging.getLogger("service.pipeline")
T = TypeVar("T")
ProgressHook = Callable[[int, int], None]  # (steps done, steps in all), after each step of a tiled transfer
ModelCall = Callable[..., Awaitable[Any]]  # runs fn(*args) where the model runs (the model thread, or inline)


class Runner(Protocol):
    """Where a transfer's steps run: blocking work off the caller's loop, and the model job."""

    decode_budget: imaging.DecodeBudget | None

    def lookup_style(self, key: str) -> StyleFeatures | None: ...

    async def offload(self, fn: Callable[..., T], *args: Any) -> T: ...

    async def compute(self, job: TransferJob) -> BatchResult[torch.Tensor]: ...


class EngineRunner:
    """The :class:`Runner` of one transfer at a time in this thread (the command line's local mode): blocking
    steps inline, the job straight to the engine as a batch of one, or as tile steps when it is large
    (``on_progress`` hears of each)."""

    decode_budget = None  # one transfer at a time: the machine's memory is the only budget
    rate = None  # no job limits in this process: nothing to estimate
    deadline = math.inf

    def __init__(self, engine: Engine, on_progress: ProgressHook | None = None) -> None:
        self.engine = engine
        self.on_progress = on_progress

    def lookup_style(self, key: str) -> StyleFeatures | None:
        return self.engine.lookup_style(key)

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)

    async def call_model(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)

    async def compute(self, job: TransferJob) -> BatchResult[torch.Tensor]:
        if self.engine.needs_tiling(job):
            return await compute_tiled(self.engine, job, _inline, self.on_progress)
        started = time.monotonic()
        try:
            result = self.engine.run_batch([job])[0]
        except Exception as exc:
            result = exc
        if isinstance(result, BaseException):
            raise self.engine.failure(job, result)
        return BatchResult(result, batch_id=0, batch_size=1, queue_s=0.0, compute_s=time.monotonic() - started)


async def _inline(fn: Callable[..., T], *args: Any) -> T:
    return fn(*args)


async def compute_tiled(
    engine: Engine, job: TransferJob, call: ModelCall, on_progress: ProgressHook | None = None,
    deadline: float = math.inf,
) -> BatchResult[torch.Tensor]:
    """A large job as tile steps, each one ``call`` (one model-thread turn, so other work runs between tiles);
    a cancelled caller stops before its next step, and one whose pace cannot reach ``deadline`` (monotonic) stops
    with :class:`~service.errors.JobTooLong`. Failures are answered as :meth:`Engine.failure` says."""
    started = time.monotonic()
    try:
        tiled = await call(engine.tiled, job)  # encodes the job's styles
        if on_progress is not None:
            on_progress(0, tiled.total)
        pace = Pace(deadline, "tile step")
        for step in tiled.steps():
            await call(step)
            if on_progress is not None:
                on_progress(tiled.done, tiled.total)
            pace.check(tiled.done, tiled.total, time.monotonic())
        image = await call(engine.finish_tiled, job, tiled)
    except ServiceError:
        raise
    except Exception as exc:
        raise engine.failure(job, exc) from exc
    return BatchResult(image, batch_id=0, batch_size=1, queue_s=0.0, compute_s=time.monotonic() - started)


@dataclass(frozen=True)
class PreparedTransfer:
    """A validated request and its decoded job: what is left is the model and the encoding."""

    request: TransferRequest
    job: TransferJob


@dataclass(frozen=True)
class TransferOutcome:
    """The encoded image and how long each part took."""

    body: bytes
    format: OutputFormat
    width: int
    height: int
    queue_s: float
    compute_s: float
    batch_id: int
    batch_size: int

    @property
    def media_type(self) -> str:
        return self.format.media_type

    def details(self) -> dict[str, Any]:
        """The job view's result fields beyond format, size and bytes (a video's has more)."""
        return {}


async def run_transfer(
    request: TransferRequest, settings: Settings, runner: Runner, metrics: ServiceMetrics | None = None
) -> TransferOutcome:
    """Validate (cheap, on the caller), decode and encode through ``runner.offload``, compute via the runner."""
    prepared = await prepare_transfer(request, settings, runner, metrics)
    return await complete_transfer(prepared, runner, metrics)


async def prepare_transfer(
    request: TransferRequest,
    settings: Settings,
    runner: Runner,
    metrics: ServiceMetrics | None = None,
    *,
    max_side: int | None = None,
) -> PreparedTransfer:
    """Validate and decode: every bad input is refused here, before any model work. ``max_side``: the
    largest side allowed (the jobs API's own limit), default ``settings.max_side``."""
    request = validate(request, settings, max_side)
    started = time.monotonic()
    job = await runner.offload(prepare_guarded, request, settings, runner.lookup_style, runner.decode_budget)
    if metrics is not None:
        metrics.decode_time.observe(time.monotonic() - started)
    return PreparedTransfer(request, job)


async def complete_transfer(
    prepared: PreparedTransfer, runner: Runner, metrics: ServiceMetrics | None = None
) -> TransferOutcome:
    """The model (``runner.compute``) and the encoding of a prepared transfer."""
    request, job = prepared.request, prepared.job
    result = await runner.compute(job)
    started = time.monotonic()
    body = await runner.offload(encode, result.value, request.format)
    if metrics is not None:
        metrics.encode_time.observe(time.monotonic() - started)
    return TransferOutcome(
        body=body,
        format=OutputFormat(request.format),
        width=job.width,
        height=job.height,
        queue_s=result.queue_s,
        compute_s=result.compute_s,
        batch_id=result.batch_id,
        batch_size=result.batch_size,
    )


def validate(request: TransferRequest, settings: Settings, max_side: int | None = None) -> TransferRequest:
    """Cheap checks that need no decoding (counts, weights, max_side up to ``max_side``, default the setting);
    returns it with normalised weights."""
    count = len(request.styles)
    side_limit = max_side or settings.max_side
    mode = Mode(request.mode)
    if request.style_fit is not None:
        if request.style_fit not in {fit.value for fit in StyleFit}:
            raise InvalidParameter(
                "style_fit", f"{str(request.style_fit)[:40]!r} is not allowed; allowed: {StyleFit.text()}"
            )
        request = dataclasses.replace(request, style_fit=StyleFit(request.style_fit))
    if mode.single_style:
        if count != 1:
            raise InvalidParameter("style", f"{count} styles given (style + style_preset); {mode} takes exactly one")
    elif not 2 <= count <= settings.max_styles:
        raise InvalidParameter(
            "style", f"{count} styles given (style + style_preset); {mode} takes 2..{settings.max_styles}"
        )
    if request.max_side is not None and not (
        MAX_SIDE.contains(request.max_side) and request.max_side <= side_limit
    ):
        raise InvalidParameter(
            "max_side", f"{request.max_side} is out of range; allowed {MAX_SIDE.text(str(side_limit))}"
        )
    if mode is Mode.interpolate:
        if request.weights is None:
            raise InvalidParameter("weights", "required: one non-negative number per style")
        return dataclasses.replace(request, mode=mode, weights=normalise_weights(request.weights, count))
    if mode is Mode.multistyle:
        has_masks = bool(request.masks)
        if has_masks == (request.labels is not None):
            raise InvalidParameter("mask", "send either one mask per style or one labels image (not both)")
        if has_masks and len(request.masks or []) != count:
            raise InvalidParameter(
                "mask", f"{len(request.masks or [])} masks given for {count} styles; need one per style"
            )
    return dataclasses.replace(request, mode=mode)


def style_key(data: bytes, style_size: int, fit: StyleFit = DEFAULT_STYLE_FIT) -> str:
    """The style cache's key: the same bytes prepared at another size or fit are other features."""
    return f"{hashlib.sha256(data).hexdigest()}:{style_size}:{fit}"


def prepare_guarded(
    request: TransferRequest,
    settings: Settings,
    lookup_style: Callable[[str], StyleFeatures | None],
    budget: imaging.DecodeBudget | None = None,
) -> TransferJob:
    """:func:`prepare`, with every failure of a decoder on odd input answered as bad input, never a 500."""
    try:
        return prepare(request, settings, lookup_style, budget)
    except ServiceError:
        raise
    except MemoryError:
        raise InvalidImage("the image could not be decoded within the memory available") from None
    except Exception as exc:
        log.warning("decoding failed unexpectedly", exc_info=exc)
        raise InvalidImage(f"the image could not be decoded ({type(exc).__name__}: {exc})") from None


def prepare(
    request: TransferRequest,
    settings: Settings,
    lookup_style: Callable[[str], StyleFeatures | None],
    budget: imaging.DecodeBudget | None = None,
) -> TransferJob:
    """Decode and shape every input (blocking; run in a worker thread) within the decode memory budget."""
    limits = imaging.ImageLimits(settings.max_input_pixels, budget)
    side = request.max_side or settings.default_side
    content_img = imaging.decode_image(request.content, "content", limits, fit=side)
    size = imaging.fit_within(*content_img.size, side)  # (W, H)
    content = imaging.to_tensor(imaging.resize(content_img, size))  # (3, H, W)
    fit = StyleFit(request.style_fit or settings.style_fit)
    styles = tuple(
        prepare_style(
            data, f"style[{i}]" if len(request.styles) > 1 else "style", fit, settings, limits, lookup_style
        )
        for i, data in enumerate(request.styles)
    )
    mode = Mode(request.mode)  # a caller that skipped validate() may pass the mode as a str
    weights: torch.Tensor | None = None
    if mode is Mode.interpolate:
        assert request.weights is not None
        weights = torch.tensor(request.weights, dtype=torch.float32)  # (N,)
    elif mode is Mode.multistyle:
        weights = _region_weights(request, size, limits)  # (N, H, W)
    return TransferJob(
        mode=mode,
        content=content,
        styles=styles,
        weights=weights,
        alpha=request.alpha,
        preserve_color=request.preserve_color,
    )


def prepare_style(
    data: bytes,
    field: str,
    fit: StyleFit,
    settings: Settings,
    limits: imaging.ImageLimits,
    lookup_style: Callable[[str], StyleFeatures | None],
) -> StyleInput:
    side = settings.style_size
    key = style_key(data, side, fit)
    cached = lookup_style(key)
    if cached is not None:
        return StyleInput(key=key, image=None, features=cached)  # skip decoding altogether
    if fit is StyleFit.whole:
        image = imaging.decode_image(data, field, limits, long_side=side)  # (Ws, Hs), max(Ws, Hs) = S
    else:
        image = imaging.square_crop(imaging.decode_image(data, field, limits, cover=side), side)  # (S, S)
    return StyleInput(key=key, image=imaging.to_tensor(image), features=None)  # (3, Hs, Ws)


def _region_weights(
    request: TransferRequest, size: tuple[int, int], limits: imaging.ImageLimits
) -> torch.Tensor:
    count = len(request.styles)
    if request.masks:
        masks = [imaging.decode_mask(data, f"mask[{i}]", limits, size) for i, data in enumerate(request.masks)]
        maps = regions.masks_to_regions(masks, size)  # (N, H, W)
    else:
        assert request.labels is not None
        labels = imaging.decode_labels(request.labels, "labels", limits, count, size)
        maps = regions.labels_to_regions(labels, count, size)  # (N, H, W)
    return regions.soft_weights_(maps, request.feather)  # maps is ours: weighted in place


def encode(image: torch.Tensor, fmt: str) -> bytes:
    """uint8 (3, H, W) -> image file bytes (blocking; run in a worker thread)."""
    return imaging.encode_image(imaging.from_uint8(image), fmt)
