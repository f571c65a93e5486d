"""What a job asks of this server before it runs: the memory it holds while it waits, and the model time it needs.

Jobs wait in memory and run one at a time, each within STYA2K_JOB_TIMEOUT_S of its acceptance. So two questions
are answered at submission, before anything is decoded or queued:

- memory: the bytes a job holds from acceptance to its end (its decoded inputs: content, per-region weights,
  styles, and the raw upload) are reserved in one budget for all jobs (STYA2K_JOBS_MEMORY_BYTES). A job that
  alone needs more than the budget is refused with 413; one that does not fit beside the jobs already held, with
  429 and Retry-After.
- time: the model time a job needs is estimated from its output pixels (times frames, for a video) and the seconds
  per output pixel measured on this server (a timed pass at start-up, then every job's own batches). A job whose
  estimate alone exceeds the time limit is refused with 413; one that would only miss it because of the jobs
  ahead of it, with 429. While a job runs, its own measured pace is checked against its deadline, so a job the
  estimate let through ends as soon as it is clear that it cannot finish, not an hour later.

Plain Python; :mod:`service.jobs` calls it.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from PIL import Image

from service import regions
from service.contract import Mode, StyleInput, TransferJob, TransferRequest, VideoRequest
from service.errors import JobQueueFull, JobTooLarge, JobTooLong
from service.geometry import fit_within

log = logging.getLogger("service.workload")

FLOAT_BYTES = 4  # decoded images and region weights are float32 tensors
RGB = 3
# Model turns smaller than this are dominated by fixed costs (kernel launches, the batch's set-up): not a sample.
MIN_SAMPLE_PIXELS = 128 * 128
RATE_SMOOTHING = 0.3  # weight of a new sample in the running mean of seconds per pixel
# One sample moves the rate by at most this factor either way: a burst of odd turns cannot poison the estimate.
MAX_SAMPLE_STEP = 2.0
# The start-up pass that seeds the rate: large enough to be a per-pixel cost, short on a CPU; on a GPU the
# default output side (a 256 px pass there is mostly fixed overhead).
CPU_PROBE_SIDE = 256
# Submission refuses only a job whose estimate exceeds the limit by this factor: the estimate comes from other
# shapes and batch sizes, and the running job's own pace is the exact check.
ESTIMATE_MARGIN = 1.5
# A running job is judged by its own pace once, counted from the end of its first step (decoder start-up, style
# encoding and per-shape kernel set-up are in that one), it has done this many steps and this share of them, for
# this long; it stops when even PACE_MARGIN times its pace so far would miss the deadline.
MIN_PACE_S = 2.0
MIN_PACE_STEPS = 2
MIN_PACE_SHARE = 0.1
PACE_MARGIN = 1.25
MiB = 2**20


class ComputeRate:
    """Seconds of model time per output pixel on this server: a running mean of what the model turns took."""

    def __init__(self) -> None:
        self.seconds_per_pixel: float | None = None
        self.samples = 0

    def observe(self, pixels: int, seconds: float) -> None:
        """One clean sample: model turns of one job's frames only, its styles already encoded."""
        if pixels < MIN_SAMPLE_PIXELS or seconds <= 0:
            return
        rate = seconds / pixels
        old = self.seconds_per_pixel
        if old is not None:
            rate = min(max(rate, old / MAX_SAMPLE_STEP), old * MAX_SAMPLE_STEP)
            rate = (1 - RATE_SMOOTHING) * old + RATE_SMOOTHING * rate
        self.seconds_per_pixel = rate
        self.samples += 1

    def estimate_s(self, pixels: int) -> float | None:
        """Model seconds for ``pixels`` output pixels; None before anything was measured."""
        return None if self.seconds_per_pixel is None else pixels * self.seconds_per_pixel

    def info(self) -> dict[str, float | int | None]:
        per_mpx = None if self.seconds_per_pixel is None else round(self.seconds_per_pixel * 1e6, 4)
        return {"seconds_per_megapixel": per_mpx, "samples": self.samples}


class RateProbeEngine(Protocol):
    """The two engine calls :func:`probe_rate` needs (service.engine.Engine has them)."""

    def with_style_features(self, styles: Sequence[StyleInput]) -> tuple[StyleInput, ...]: ...

    def run_batch(self, jobs: list[TransferJob]) -> list[torch.Tensor | BaseException]: ...


def probe_rate(engine: RateProbeEngine, rate: ComputeRate, style_size: int, side: int) -> float:
    """Seed ``rate`` with one timed pass at ``side`` (in the model thread, after the warm-up); returns its s."""
    generator = torch.Generator().manual_seed(0)
    style = StyleInput(key=f"rate-probe:{style_size}", image=torch.rand(3, style_size, style_size, generator=generator),
                       features=None)  # fmt: skip
    styles = engine.with_style_features((style,))  # encoded apart: the rate is the transfer's, not the encoder's
    job = TransferJob(mode=Mode.stylize, content=torch.rand(3, side, side, generator=generator),
                      styles=styles, weights=None, alpha=1.0, preserve_color=False)  # fmt: skip
    started = time.monotonic()
    result = engine.run_batch([job])[0]
    seconds = time.monotonic() - started
    if isinstance(result, BaseException):
        raise result
    rate.observe(side * side, seconds)
    return seconds


# ---------------------------------------------------------------------------------------------- memory
@dataclass
class Reservation:
    nbytes: int


class MemoryBudget:
    """Bytes all accepted jobs (queued and running) hold together; a job reserves its share before it is decoded."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self.used = 0
        self.peak = 0

    def reserve(self, nbytes: int, what: str, retry_after_s: float) -> Reservation:
        if nbytes > self.capacity:
            raise JobTooLarge(
                f"{what} would hold {_mib(nbytes)} of decoded inputs while it waits and runs; all jobs together may "
                f"hold {_mib(self.capacity)} (STYA2K_JOBS_MEMORY_BYTES); ask for a smaller max_side, fewer styles "
                "or masks, or a shorter upload"
            )
        if self.used + nbytes > self.capacity:
            raise JobQueueFull(
                f"{what} needs {_mib(nbytes)} of job memory and {_mib(self.capacity - self.used)} of "
                f"{_mib(self.capacity)} is free now (STYA2K_JOBS_MEMORY_BYTES); retry when queued jobs have run",
                retry_after_s=retry_after_s,
            )
        self.used += nbytes
        self.peak = max(self.peak, self.used)
        return Reservation(nbytes)

    def resize(self, reservation: Reservation, nbytes: int) -> None:
        """True a reservation up to what the job really holds once decoded (its estimate was an upper bound)."""
        self.used += nbytes - reservation.nbytes
        self.peak = max(self.peak, self.used)
        reservation.nbytes = nbytes

    def release(self, reservation: Reservation | None) -> None:
        if reservation is not None and reservation.nbytes:
            self.used -= reservation.nbytes
            reservation.nbytes = 0


def _mib(nbytes: int) -> str:
    return f"{nbytes / MiB:.1f} MiB ({nbytes} bytes)"


def image_size(data: bytes) -> tuple[int, int] | None:
    """(W, H) from the image's header without decoding its pixels; None when the header is unreadable (the decode
    then refuses it with the precise reason)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:
        return None


def style_bytes(count: int, style_size: int) -> int:
    """Upper bound of ``count`` decoded styles: a crop is S x S, a whole style has its long side S."""
    return count * RGB * FLOAT_BYTES * style_size * style_size


def transfer_bytes(request: TransferRequest, side: int, style_size: int) -> int:
    """Upper bound of what an image job holds from its preparation to its end: raw uploads, the content at its
    output size, the decoded styles and, for multistyle, the region weights with their temporaries while they are
    made (one float map per style is then held)."""
    size = image_size(request.content)
    width, height = fit_within(*size, side) if size is not None else (side, side)
    pixels = width * height
    count = len(request.styles)
    held = pixels * RGB * FLOAT_BYTES + style_bytes(count, style_size) + raw_bytes(request)
    if Mode(request.mode) is Mode.multistyle:
        # the weights' temporaries while they are made (they include the weights the job then holds)
        held += regions.peak_bytes(count, width, height, request.feather)
    return held


def video_bytes(request: VideoRequest, style_size: int) -> int:
    """What a video job holds until it ends: its upload (decoded frame by frame as it runs) and its styles."""
    return len(request.video) + sum(len(s) for s in request.styles) + style_bytes(len(request.styles), style_size)


def raw_bytes(request: TransferRequest) -> int:
    return (len(request.content) + sum(len(s) for s in request.styles) + sum(len(m) for m in request.masks or ())
            + len(request.labels or b""))  # fmt: skip


def job_tensor_bytes(job: TransferJob) -> int:
    """Bytes of a decoded job's tensors (content, weights, styles not served from the cache)."""
    held = job.content.nbytes + (job.weights.nbytes if job.weights is not None else 0)
    return held + sum(s.image.nbytes for s in job.styles if s.image is not None)


def style_tensor_bytes(styles: Iterable[StyleInput]) -> int:
    """Bytes of decoded styles not served from the cache."""
    return sum(s.image.nbytes for s in styles if s.image is not None)


# ---------------------------------------------------------------------------------------------- time
class Pace:
    """A running job's own pace, from the end of its first step: stops it (:class:`~service.errors.JobTooLong`)
    as soon as the rest cannot be done before its deadline, instead of holding the worker until the limit."""

    def __init__(self, deadline: float, unit: str) -> None:
        self.deadline = deadline
        self.unit = unit
        self._first: tuple[int, float] | None = None  # (steps done, time) at the end of the first step

    def check(self, done: int, total: int, now: float) -> None:
        if self._first is None:
            self._first = (done, now)
            return
        first_done, first_at = self._first
        steps, elapsed = done - first_done, now - first_at
        if (math.isinf(self.deadline) or done >= total or steps < MIN_PACE_STEPS or elapsed < MIN_PACE_S
                or done < MIN_PACE_SHARE * total):  # fmt: skip
            return
        per_step = elapsed / steps
        needed = (total - done) * per_step
        if now + needed / PACE_MARGIN > self.deadline:
            raise JobTooLong(
                f"at the {per_step:.2f} s per {self.unit} measured so far, the remaining {total - done} of {total} "
                f"{self.unit}s need about {needed:.0f} s more, and the job's time ends in "
                f"{max(0.0, self.deadline - now):.0f} s (STYA2K_JOB_TIMEOUT_S counts from acceptance); send a "
                "shorter clip or a smaller max_side"
            )
