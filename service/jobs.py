"""Jobs: transfers that outlive a request (``/v1/jobs``), queued, run one at a time, their results kept a while.

A job is validated and decoded before it is accepted (:func:`service.pipeline.prepare_transfer`, the sync
endpoints' own path), so bad input is refused at submission and an accepted job can only fail in the model or
on its time limit. One worker runs the accepted jobs in order: a job small enough for one forward pass goes
through the batcher like a sync request; a large one runs as tile steps, each its own turn of the model thread,
so sync requests' batches run between two tiles instead of waiting minutes for the whole job. A video job
(:mod:`service.video`) is probed at submission the same way and runs as batches of frames, one model-thread
turn each; its progress counts frames.

Persistence: none. Jobs live in this process's memory and a restart loses them (queued, running and finished).
A result is recomputable from its inputs, which the client still has, and a disk or a shared store would add a
failure mode and a cleanup duty to every replica for that. Jobs are per replica: the client polls the replica
that accepted the job (the Location is relative). A job id is ``<replica>.<random>``: the replica part
(STYA2K_REPLICA_ID) lets the load balancer route a job's requests to the replica that holds it (deploy/nginx),
and lets a replica that gets another's id say which one holds it.

This is the default store; STYA2K_JOBS_STORE=redis://... shares jobs between replicas instead
(:mod:`service.redis_jobs`, chosen in :mod:`service.job_store`).

Plain Python (no web framework): ``service.api.job_routes`` turns these calls into HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import re
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

import torch

from model import StyleFeatures
from service import imaging
from service.batcher import Batcher, BatchResult, ModelThread
from service.contract import Mode, TransferJob, TransferRequest, VideoRequest
from service.engine import Engine
from service.errors import (
    DeadlineExceeded,
    Draining,
    ImageTooLarge,
    Internal,
    JobExpired,
    JobNotDone,
    JobNotFound,
    JobQueueFull,
    JobTooLong,
    QueueFull,
    ServiceError,
    byte_size,
)
from service.metrics import ServiceMetrics
from service.pipeline import (
    PreparedTransfer,
    ProgressHook,
    TransferOutcome,
    complete_transfer,
    compute_tiled,
    prepare_transfer,
)
from service.settings import Settings
from service.video import PreparedVideo, VideoOutcome, complete_video, prepare_video
from service.workload import (
    ESTIMATE_MARGIN,
    ComputeRate,
    MemoryBudget,
    Reservation,
    job_tensor_bytes,
    raw_bytes,
    style_tensor_bytes,
    transfer_bytes,
    video_bytes,
)

log = logging.getLogger("service.jobs")
T = TypeVar("T")

JOBS_PATH = "/v1/jobs"
# A finished job's status stays readable this many result lifetimes after it ended (then 404), and at most
# MAX_FINISHED finished jobs are remembered at all (the oldest forgotten first): a status is a few hundred bytes,
# but a client that never comes back must not grow the server forever.
FORGET_AFTER_TTLS = 2
MAX_FINISHED = 10_000
DEFAULT_RUN_S = 5.0  # Retry-After before any job has run: a guess, replaced by the measured mean
# <replica>.<random>; the replica part as settings.REPLICA_ID_PATTERN (nginx's map in deploy/nginx matches it too)
JOB_ID_PATTERN = re.compile(r"^([a-z0-9][a-z0-9-]{0,31})\.([0-9a-f]{32})$")


def held_bytes(prepared: PreparedTransfer | PreparedVideo) -> int:
    """What an accepted job holds until it ends: its raw uploads and decoded tensors."""
    if isinstance(prepared, PreparedVideo):
        request = prepared.request
        return len(request.video) + sum(len(s) for s in request.styles) + style_tensor_bytes(prepared.styles)
    return raw_bytes(prepared.request) + job_tensor_bytes(prepared.job)


def new_job_id(replica: str) -> str:
    """``<replica>.<32 hex>``: 122 random bits (uuid4), since the id is the job's only handle and must not be
    guessable; the replica part (settings.REPLICA_ID_PATTERN) names the replica that holds the job."""
    return f"{replica}.{uuid.uuid4().hex}"


def job_replica(job_id: str) -> str | None:
    """The replica part of a job id, or None when ``job_id`` is not ``<replica>.<32 hex>``."""
    match = JOB_ID_PATTERN.match(job_id)
    return match.group(1) if match else None


class JobState(StrEnum):
    queued = "queued"  # accepted, decoded, waiting for the worker
    running = "running"
    done = "done"  # the result can be downloaded
    failed = "failed"  # error says why
    cancelled = "cancelled"  # by DELETE, or by a shutdown
    expired = "expired"  # was done; the result is gone (time to live, room for newer results, or deleted)

    @property
    def finished(self) -> bool:
        return self not in (JobState.queued, JobState.running)


@dataclass(eq=False)
class Job:
    """One accepted job. Times are ``time.monotonic()``; ``accepted_wall`` dates them for clients."""

    id: str
    mode: Mode
    accepted_at: float
    accepted_wall: float
    deadline: float
    prepared: PreparedTransfer | PreparedVideo | None  # dropped when the job ends (its decoded inputs)
    runner: JobRunner | None
    kind: str = "image"  # or "video": progress counts frames
    state: JobState = JobState.queued
    started_at: float | None = None
    finished_at: float | None = None
    done: int = 0  # steps (tiles of both passes; 1 for a job done in one pass) or a video's frames
    total: int = 1
    error: ServiceError | None = None
    outcome: TransferOutcome | VideoOutcome | None = None
    gone: str | None = None  # why the result is no longer here (the 410 message)
    cancel_requested: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    memory: Reservation | None = None  # its share of STYA2K_JOBS_MEMORY_BYTES, released when it ends
    estimate_s: float | None = None  # model seconds it needs, from the measured rate (None: nothing measured yet)

    @property
    def path(self) -> str:
        return f"{JOBS_PATH}/{self.id}"

    def wall(self, at: float) -> str:
        """A monotonic time as UTC ISO 8601."""
        stamp = self.accepted_wall + (at - self.accepted_at)
        return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def view(self, now: float, ttl_s: float) -> dict[str, Any]:
        """The job as GET /v1/jobs/{id} answers it (docs/API.md "Jobs")."""
        end = self.finished_at if self.finished_at is not None else now
        queued_until = self.started_at if self.started_at is not None else end
        body: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "mode": str(self.mode),
            "state": str(self.state),
            "progress": {"done": self.done, "total": self.total, "unit": "frames" if self.kind == "video" else "steps"},
            "timings": {
                "queued_s": round(queued_until - self.accepted_at, 3),
                "running_s": None if self.started_at is None else round(end - self.started_at, 3),
                "total_s": round(end - self.accepted_at, 3),
            },
            "accepted_at": self.wall(self.accepted_at),
            "finished_at": None if self.finished_at is None else self.wall(self.finished_at),
            "error": None if self.error is None else {"code": self.error.code, "message": self.error.message},
            "links": {"self": self.path, "result": f"{self.path}/result"},
        }
        if self.cancel_requested and not self.state.finished:
            body["cancel_requested"] = True
        if self.outcome is not None and self.finished_at is not None:
            body["result"] = {
                "format": str(self.outcome.format),
                "width": self.outcome.width,
                "height": self.outcome.height,
                "bytes": len(self.outcome.body),
                "expires_at": self.wall(self.finished_at + ttl_s),
                **self.outcome.details(),
            }
        if self.gone is not None:
            body["expired_reason"] = self.gone
        return body


@dataclass
class JobRunner:
    """:class:`service.pipeline.Runner` of a job: decodes in the server's thread pool within the decode budget;
    computes a large job as tile steps, one model-thread turn each, and a small one on the batcher."""

    engine: Engine
    io_pool: Executor
    batcher: Batcher[TransferJob, torch.Tensor]
    model_thread: ModelThread
    decode_budget: imaging.DecodeBudget | None
    rate: ComputeRate | None = None  # fed with the model time of this job's turns
    deadline: float = math.inf  # time.monotonic(); set per job when it runs
    on_progress: ProgressHook | None = None

    def lookup_style(self, key: str) -> StyleFeatures | None:
        return self.engine.lookup_style(key)

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.io_pool, fn, *args)

    async def call_model(self, fn: Callable[..., T], *args: Any) -> T:
        """One turn of the model thread (a video's batch of frames): sync batches run between two turns."""
        return await self.model_thread.call(fn, *args)

    async def compute(self, job: TransferJob) -> BatchResult[torch.Tensor]:
        if self.engine.needs_tiling(job):  # not a rate sample: its time includes the sync batches between tiles
            return await compute_tiled(self.engine, job, self.model_thread.call, self.on_progress, self.deadline)
        # Not a rate sample either: its batch time includes encoding new styles and any sync requests batched
        # with it (the rate hears of clean turns only: the start-up probe and video frames).
        self._progress(0, 1)
        result = await self._submit(job)
        self._progress(1, 1)
        return result

    async def _submit(self, job: TransferJob) -> BatchResult[torch.Tensor]:
        key = self.engine.batch_key(job)
        while True:
            try:
                return await self.batcher.submit(key, job, deadline=self.deadline)
            except QueueFull as exc:
                # The sync queue is full of requests: an accepted job waits for room rather than failing.
                wait_s = exc.retry_after_s or 1.0
                await asyncio.sleep(max(0.01, min(wait_s, self.deadline - time.monotonic())))

    def _progress(self, done: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(done, total)


class JobStore:
    """The accepted jobs of this process: the bounded queue, the worker that runs them, their results."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.replica = settings.replica  # the first part of every job id made here
        self._jobs: dict[str, Job] = {}
        self._queue: deque[Job] = deque()
        self._results: OrderedDict[str, Job] = OrderedDict()  # done jobs, oldest first (eviction order)
        self._ended: OrderedDict[str, Job] = OrderedDict()  # every finished job, by end (forgetting order)
        self._result_bytes = 0
        self._reserved = 0  # submissions being decoded: they hold a queue slot
        self._running: Job | None = None  # one job at a time: the model thread is one
        self.memory = MemoryBudget(settings.jobs_memory_bytes)
        self.rate = ComputeRate()  # model seconds per output pixel, for the time each job needs
        self._wake = asyncio.Event()
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        self._run_s_mean = 0.0  # exponential mean of jobs' running time, for Retry-After
        metrics.jobs_oldest_queued_age.set_function(self._oldest_queued_age_s)

    # ------------------------------------------------------------------------------------------- lifecycle
    def start(self, runner: JobRunner | None = None) -> None:
        """Start the worker and the sweeper (which drops expired results even when nobody asks). ``runner`` is
        unused here: a job accepted in memory carries the runner it was submitted with."""
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._work(), name="stya2k-jobs"),
            loop.create_task(self._sweep_forever(), name="stya2k-jobs-sweep"),
        ]

    async def close(self, timeout_s: float) -> None:
        """Shutdown: refuse new jobs, cancel the queued ones, give a running one ``timeout_s`` to finish."""
        self._closed = True
        while self._queue:
            job = self._queue.popleft()
            job.error = Draining("the server shut down before this job ran; submit it again")
            self._end(job, JobState.cancelled)
        job = self._running
        if job is not None and job.task is not None:
            await asyncio.wait({job.task}, timeout=timeout_s)
            if not job.task.done():
                log.warning("job %s still running after the drain timeout; cancelling it", job.id)
                job.cancel_requested = True
                job.error = Draining(f"the server shut down after waiting {timeout_s:g} s for this job")
                job.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job.task
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # ------------------------------------------------------------------------- service.job_store.Jobs (async face)
    async def submit(self, request: TransferRequest | VideoRequest, runner: JobRunner) -> dict[str, Any]:
        if isinstance(request, VideoRequest):
            return self.view(await self.accept_video(request, runner))
        return self.view(await self.accept(request, runner))

    async def status(self, job_id: str) -> dict[str, Any]:
        return self.view(self.get(job_id))

    async def fetch(self, job_id: str) -> TransferOutcome | VideoOutcome:
        return self.result(job_id)

    async def delete(self, job_id: str) -> tuple[dict[str, Any], bool]:
        job = self.cancel(job_id)
        return self.view(job), job.state is JobState.running

    async def info(self) -> dict[str, Any]:
        return {"store": "memory", **self.counts()}

    def _oldest_queued_age_s(self) -> float:
        return time.monotonic() - self._queue[0].accepted_at if self._queue else 0.0

    # ------------------------------------------------------------------------------------------- requests
    async def accept(self, request: TransferRequest, runner: JobRunner) -> Job:
        """Validate and decode ``request`` (bad input raises here, nothing is queued), then queue it."""
        side = min(request.max_side or self.settings.default_side, self.settings.jobs_max_side)
        return await self._accept(
            prepare_transfer(request, self.settings, runner, self.metrics, max_side=self.settings.jobs_max_side),
            runner,
            transfer_bytes(request, side, self.settings.style_size),
        )

    async def accept_video(self, request: VideoRequest, runner: JobRunner) -> Job:
        """Validate and probe the video, decode the styles (bad input raises here), then queue it."""
        return await self._accept(
            prepare_video(request, self.settings, runner, self.metrics), runner,
            video_bytes(request, self.settings.style_size),
        )  # fmt: skip

    async def _accept(
        self,
        preparing: Coroutine[Any, Any, PreparedTransfer | PreparedVideo],
        runner: JobRunner,
        estimated_bytes: int,
    ) -> Job:
        """Room in the queue and in the jobs' memory first (before anything is decoded), then prepare, then the
        time the job needs against its limit; only then is it queued."""
        self._sweep()
        try:
            self._check_room()
            memory = self.memory.reserve(estimated_bytes, "this job", self._retry_after_s())
        except ServiceError:
            preparing.close()  # never started: no "coroutine was never awaited" warning
            raise
        self._reserved += 1
        try:
            prepared = await preparing
            self.memory.resize(memory, held_bytes(prepared))
            estimate_s = self._estimate_s(prepared)
            self._check_time(estimate_s)
            if self._closed:
                raise Draining("the server is shutting down; submit the job to another instance", retry_after_s=1)
        except BaseException:
            self.memory.release(memory)
            raise
        finally:
            self._reserved -= 1
        now = time.monotonic()
        job = Job(
            id=new_job_id(self.replica),
            mode=prepared.request.mode,
            accepted_at=now,
            accepted_wall=time.time(),
            deadline=now + self.settings.job_timeout_s,
            prepared=prepared,
            runner=dataclasses.replace(runner, rate=self.rate),
            kind="video" if isinstance(prepared, PreparedVideo) else "image",
            memory=memory,
            estimate_s=estimate_s,
        )
        if isinstance(prepared, PreparedVideo):
            job.total = prepared.info.frames
        self._jobs[job.id] = job
        self._queue.append(job)
        self._wake.set()
        self._update_gauges()
        log.info("job accepted", extra={"job": job.id, "mode": str(job.mode), "queued": len(self._queue)})
        return job

    def _estimate_s(self, prepared: PreparedTransfer | PreparedVideo) -> float | None:
        if isinstance(prepared, PreparedVideo):
            width, height = prepared.size
            return self.rate.estimate_s(prepared.info.frames * width * height)
        return self.rate.estimate_s(prepared.job.width * prepared.job.height)

    def _check_time(self, estimate_s: float | None) -> None:
        """413 when the job alone needs more model time than its limit; 429 when the jobs ahead of it would make
        it miss its limit (its time counts from acceptance, queued time included)."""
        if estimate_s is None:
            return  # nothing measured yet: the job's own pace is checked while it runs
        limit = self.settings.job_timeout_s
        per_mpx = (self.rate.seconds_per_pixel or 0.0) * 1e6
        if estimate_s > ESTIMATE_MARGIN * limit:
            raise JobTooLong(
                f"this job needs about {estimate_s:.0f} s of model time at the {per_mpx:.2f} s per megapixel "
                f"measured on this server, and a job must finish within {limit:g} s (STYA2K_JOB_TIMEOUT_S); "
                "send a shorter clip, fewer frames or a smaller max_side"
            )
        ahead = self._work_ahead_s()
        if estimate_s + ahead > ESTIMATE_MARGIN * limit:
            raise JobQueueFull(
                f"the jobs ahead need about {ahead:.0f} s and this one about {estimate_s:.0f} s, more than the "
                f"{limit:g} s a job has from acceptance to its result (STYA2K_JOB_TIMEOUT_S); retry later",
                retry_after_s=min(300.0, max(1.0, ahead)),
            )

    def _work_ahead_s(self) -> float:
        """Estimated model seconds of the queued jobs and the rest of the running one."""
        ahead = sum(job.estimate_s or 0.0 for job in self._queue)
        running = self._running
        if running is not None and running.estimate_s is not None:
            ahead += running.estimate_s * (1 - running.done / max(1, running.total))
        return ahead

    def get(self, job_id: str) -> Job:
        self._sweep()
        job = self._jobs.get(job_id)
        holder = job_replica(job_id)
        if job is None and holder is not None and holder != self.replica:
            raise JobNotFound(
                f"job {job_id[:80]!r} is held by replica {holder!r}, and this is replica {self.replica!r}: a job "
                "lives in the memory of the replica that accepted it; send its requests there (the bundled load "
                "balancer routes job paths by the id's replica part)"
            )
        if job is None:
            raise JobNotFound(
                f"no job {job_id[:64]!r} on this server (replica {self.replica!r}): jobs live in the memory of the "
                "server that accepted them (a restart loses them) and are forgotten a while after they end"
            )
        return job

    def result(self, job_id: str) -> TransferOutcome | VideoOutcome:
        job = self.get(job_id)
        if job.state is JobState.done and job.outcome is not None:
            return job.outcome
        if job.state is JobState.expired:
            raise JobExpired(f"the result of job {job.id} is gone: {job.gone}")
        if job.state is JobState.failed:
            assert job.error is not None
            raise JobNotDone(f"job {job.id} failed ({job.error.code}: {job.error.message}); it has no result")
        if job.state is JobState.cancelled:
            raise JobNotDone(f"job {job.id} was cancelled; it has no result")
        raise JobNotDone(
            f"job {job.id} is {job.state} ({job.done} of {job.total} steps done); poll GET {job.path} "
            "until its state is done"
        )

    def cancel(self, job_id: str) -> Job:
        """DELETE: a queued job never runs; a running one stops at its next step (the job's task is
        cancelled); a done one's result is deleted. A job already failed, cancelled or expired is left as is."""
        job = self.get(job_id)
        if job.state is JobState.queued:
            self._queue.remove(job)
            self._end(job, JobState.cancelled)
        elif job.state is JobState.running and job.task is not None:
            job.cancel_requested = True
            job.task.cancel()
        elif job.state is JobState.done:
            self._expire(job, "deleted by the client (DELETE)")
        return job

    def view(self, job: Job) -> dict[str, Any]:
        return job.view(time.monotonic(), self.settings.job_result_ttl_s)

    def counts(self) -> dict[str, Any]:
        """What /v1/info reports."""
        running = int(self._running is not None)
        return {
            "queued": len(self._queue), "running": running, "preparing": self._reserved,
            "result_bytes": self._result_bytes,
            "memory_bytes": self.memory.used, "memory_capacity_bytes": self.memory.capacity,
            "compute_rate": self.rate.info(),
        }  # fmt: skip

    def _check_room(self) -> None:
        if self._closed:
            raise Draining("the server is shutting down; submit the job to another instance", retry_after_s=1)
        waiting = len(self._queue) + self._reserved
        if waiting >= self.settings.jobs_queue_size:
            raise JobQueueFull(
                f"the job queue is full ({waiting} jobs waiting, STYA2K_JOBS_QUEUE_SIZE="
                f"{self.settings.jobs_queue_size}); retry later",
                retry_after_s=self._retry_after_s(),
            )

    def _retry_after_s(self) -> float:
        return min(300.0, max(1.0, self._run_s_mean or DEFAULT_RUN_S))

    # ------------------------------------------------------------------------------------------- worker
    async def _work(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            job = self._queue.popleft()
            if job.deadline <= time.monotonic():
                job.error = DeadlineExceeded(self._late_message(job, "while queued; not computed"))
                self._end(job, JobState.failed)
                continue
            job.state, job.started_at = JobState.running, time.monotonic()
            self._running = job
            self._update_gauges()
            job.task = asyncio.get_running_loop().create_task(self._execute(job), name=f"stya2k-job-{job.id[:8]}")
            # wait(), not await: cancelling the job's task (DELETE) must not cancel the worker
            await asyncio.wait({job.task})

    async def _execute(self, job: Job) -> None:
        assert job.prepared is not None and job.runner is not None
        runner = dataclasses.replace(job.runner, deadline=job.deadline, on_progress=self._progress_hook(job))
        try:
            async with asyncio.timeout(max(0.0, job.deadline - time.monotonic())):
                outcome: TransferOutcome | VideoOutcome
                if isinstance(job.prepared, PreparedVideo):
                    outcome = await complete_video(job.prepared, runner, runner.on_progress)
                else:
                    outcome = await complete_transfer(job.prepared, runner, self.metrics)
        except TimeoutError:
            job.error = DeadlineExceeded(self._late_message(job, ""))
            self._end(job, JobState.failed)
        except asyncio.CancelledError:
            if not job.cancel_requested:
                raise
            self._end(job, JobState.cancelled)
        except ServiceError as exc:
            job.error = exc
            self._end(job, JobState.failed)
        except Exception as exc:  # a bug: the job fails, the worker keeps serving
            log.exception("job %s failed unexpectedly", job.id)
            job.error = Internal(f"internal error while computing this job ({type(exc).__name__})")
            self._end(job, JobState.failed)
        else:
            self._complete(job, outcome)

    def _late_message(self, job: Job, where: str) -> str:
        suffix = f" {where}" if where else f" ({job.done} of {job.total} steps done)"
        return (
            f"the job did not finish within STYA2K_JOB_TIMEOUT_S={self.settings.job_timeout_s:g} s of its "
            f"acceptance{suffix}"
        )

    def _progress_hook(self, job: Job) -> ProgressHook:
        def report(done: int, total: int) -> None:
            job.done, job.total = done, total

        return report

    def _complete(self, job: Job, outcome: TransferOutcome | VideoOutcome) -> None:
        size, limit = len(outcome.body), self.settings.job_result_bytes
        if size > limit:
            job.error = ImageTooLarge(
                f"the result ({byte_size(size)}) is larger than all the memory kept for results "
                f"(STYA2K_JOB_RESULT_BYTES={byte_size(limit)}); ask for a smaller max_side or a compressed format "
                "(jpeg, webp)"
            )
            self._end(job, JobState.failed)
            return
        job.outcome = outcome
        self._results[job.id] = job
        self._result_bytes += size
        self._end(job, JobState.done)
        while self._result_bytes > limit:  # oldest results first; this one fits alone, so it stays
            oldest = next(iter(self._results.values()))
            self._expire(oldest, f"dropped to make room for newer results (STYA2K_JOB_RESULT_BYTES={limit})")

    def _end(self, job: Job, state: JobState) -> None:
        now = time.monotonic()
        job.state, job.finished_at = state, now
        if self._running is job:
            self._running = None
        job.prepared = job.runner = None  # the decoded images: the bulk of a job's memory
        self.memory.release(job.memory)
        self._ended[job.id] = job
        self.metrics.jobs_finished.labels(outcome=str(state)).inc()
        self.metrics.job_duration.labels(outcome=str(state)).observe(now - job.accepted_at)
        if job.started_at is not None and state is JobState.done:
            run_s = now - job.started_at
            self._run_s_mean = run_s if self._run_s_mean == 0 else 0.8 * self._run_s_mean + 0.2 * run_s
        self._update_gauges()
        log.info(
            "job %s", state, extra={"job": job.id, "seconds": round(now - job.accepted_at, 3),
                                    "error": job.error.code if job.error else None},
        )  # fmt: skip

    def _expire(self, job: Job, why: str) -> None:
        if job.outcome is not None:
            self._result_bytes -= len(job.outcome.body)
        self._results.pop(job.id, None)
        job.outcome, job.gone, job.state = None, why, JobState.expired
        self.metrics.jobs_finished.labels(outcome="expired").inc()
        self._update_gauges()

    # ------------------------------------------------------------------------------------------- sweeping
    async def _sweep_forever(self) -> None:
        period = min(1.0, self.settings.job_result_ttl_s / 4)
        while True:
            await asyncio.sleep(period)
            self._sweep()

    def _sweep(self) -> None:
        """Drop results past their time to live; forget long-finished jobs; fail queued jobs past their time."""
        now, ttl = time.monotonic(), self.settings.job_result_ttl_s
        while self._results:
            oldest = next(iter(self._results.values()))
            assert oldest.finished_at is not None
            if oldest.finished_at + ttl > now:
                break
            self._expire(oldest, f"results are kept STYA2K_JOB_RESULT_TTL_S={ttl:g} s after the job ends")
        while self._ended:
            oldest = next(iter(self._ended.values()))
            assert oldest.finished_at is not None
            if oldest.finished_at + FORGET_AFTER_TTLS * ttl > now and len(self._ended) <= MAX_FINISHED:
                break
            self._ended.pop(oldest.id)
            if oldest.outcome is not None:
                self._expire(oldest, "forgotten")
            del self._jobs[oldest.id]
        for job in [job for job in self._queue if job.deadline <= now]:
            self._queue.remove(job)
            job.error = DeadlineExceeded(self._late_message(job, "while queued; not computed"))
            self._end(job, JobState.failed)

    def _update_gauges(self) -> None:
        self.metrics.jobs_queued.set(len(self._queue))
        self.metrics.jobs_running.set(int(self._running is not None))
        self.metrics.job_result_bytes.set(self._result_bytes)
