"""Dynamic batching: an async queue in front of one model worker thread.

Requests arrive decoded and validated, each with a *key* (padded content shape, number of styles,
mode) so every batch is one forward pass. A single worker takes the oldest request, waits at most
``max_wait_ms`` (counted from that request's arrival) for up to ``max_batch_size`` requests with the
same key, and runs them together in the model thread, keeping the event loop free.

Guarantees: a full queue refuses at once (429); a request whose deadline passes while queued gets 504
and is never computed; a request whose client left is dropped before compute; a batch that raises is
split and retried so one bad request (or an out-of-memory batch) never fails its batch-mates.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from service.errors import (
    ClientDisconnected,
    DeadlineExceeded,
    Draining,
    Internal,
    QueueFull,
    ServiceError,
)
from service.metrics import ServiceMetrics

log = logging.getLogger("service.batcher")

P = TypeVar("P")  # payload handed to the batch function
R = TypeVar("R")  # per-request result of the batch function

# run_batch(payloads) -> one result (or exception instance) per payload, in order; runs in the model thread.
# (Not a "Runner": that word names service.pipeline.Runner, where a transfer's steps run.)
BatchFunction = Callable[[list[P]], Sequence[R | BaseException]]
# failure_mapper(payload, exception) -> the error that request gets when it fails on its own
FailureMapper = Callable[[P, BaseException], ServiceError]


class ModelThread:
    """One daemon thread that runs model calls in order.

    A daemon (not a ThreadPoolExecutor) so a wedged forward pass can never block process exit after
    the drain timeout.
    """

    def __init__(self, name: str = "stya2k-model") -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Any, Any] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    async def call(self, fn: Callable[..., R], *args: Any) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._jobs.put((fn, args, loop, future))
        return await future

    def stop(self) -> None:
        self._jobs.put(None)

    def join(self, timeout_s: float) -> bool:
        """Wait for the thread to finish its current call after stop(); True when it has ended."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args, loop, future = job
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the awaiting coroutine, never lost
                _deliver(loop, future, None, exc)
            else:
                _deliver(loop, future, result, None)


def _deliver(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any, error: BaseException | None
) -> None:
    try:
        loop.call_soon_threadsafe(_settle, future, result, error)
    except RuntimeError:  # the loop closed while this call ran (a shutdown cancelled its caller): nobody awaits it
        log.debug("model call finished after the event loop closed; result dropped")


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the awaiting request was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


@dataclass(frozen=True)
class BatchResult(Generic[R]):
    value: R
    batch_id: int
    batch_size: int
    queue_s: float
    compute_s: float


@dataclass(eq=False)
class _Job:
    key: Hashable
    payload: Any
    deadline: float  # time.monotonic()
    enqueued_at: float
    future: asyncio.Future[BatchResult[Any]]
    disconnected: Callable[[], bool] | None
    state: str = "queued"  # queued -> running -> done, or queued -> dropped
    started_at: float = 0.0


@dataclass
class BatcherStats:
    batches: int = 0
    computed: int = 0
    largest_batch: int = 0
    dropped_deadline: int = 0
    dropped_disconnected: int = 0
    splits: int = 0
    batch_sizes: list[int] = field(default_factory=list)  # last 1000 forward passes

    def record(self, size: int) -> None:
        self.batches += 1
        self.computed += size
        self.largest_batch = max(self.largest_batch, size)
        self.batch_sizes.append(size)
        del self.batch_sizes[:-1000]


class Batcher(Generic[P, R]):
    def __init__(
        self,
        run_batch: BatchFunction[P, R],
        *,
        max_batch_size: int,
        max_wait_ms: float,
        queue_size: int,
        metrics: ServiceMetrics,
        failure_mapper: FailureMapper[P] | None = None,
        model_thread: ModelThread | None = None,
    ) -> None:
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self._metrics = metrics
        self._failure_mapper = failure_mapper or _default_failure
        self._thread = model_thread or ModelThread()
        self._owns_thread = model_thread is None
        self._pending: deque[_Job] = deque()
        self._arrived = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._batch_ids = itertools.count(1)
        self._batch_s_ema = 0.0  # for Retry-After
        self._worker: asyncio.Task[None] | None = None
        self.stats = BatcherStats()

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="stya2k-batcher")

    async def close(self, timeout_s: float) -> None:
        """Refuse new work, let queued work finish (up to ``timeout_s``), then stop the worker."""
        self._closed = True
        self._arrived.set()
        deadline = time.monotonic() + timeout_s
        while (self._pending or not self._idle.is_set()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for job in list(self._pending):
            self._drop(job, Draining("the server shut down before this request was computed"))
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._owns_thread:
            self._thread.stop()

    @property
    def depth(self) -> int:
        return len(self._pending)

    # ----------------------------------------------------------------- submit
    async def submit(
        self,
        key: Hashable,
        payload: P,
        *,
        deadline: float,
        disconnected: Callable[[], bool] | None = None,
    ) -> BatchResult[R]:
        """Queue one request and wait for its result; raises the request's ServiceError."""
        if self._closed:
            raise Draining("the server is shutting down; retry on another instance", retry_after_s=1)
        if len(self._pending) >= self.queue_size:
            raise QueueFull(
                f"the queue is full ({self.queue_size} requests waiting); retry later",
                retry_after_s=self._retry_after_s(),
            )
        now = time.monotonic()
        if deadline <= now:
            raise DeadlineExceeded("the deadline passed before the request was queued; not computed")
        loop = asyncio.get_running_loop()
        job = _Job(key, payload, deadline, now, loop.create_future(), disconnected)
        self._pending.append(job)
        self._metrics.queue_depth.set(len(self._pending))
        self._arrived.set()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout=deadline - now)
        except TimeoutError:
            if job.state == "queued":
                self.stats.dropped_deadline += 1
                self._drop(job, DeadlineExceeded("the deadline passed while queued; not computed"))
            # Already computing: the work is being done, so deliver it rather than waste it.
            return await job.future
        except asyncio.CancelledError:
            if job.state == "queued":
                self._drop(job, ClientDisconnected("request cancelled while queued"))
            raise

    def _retry_after_s(self) -> float:
        batches_ahead = math.ceil(len(self._pending) / self.max_batch_size)
        return max(1.0, batches_ahead * max(self._batch_s_ema, self.max_wait_s))

    def _drop(self, job: _Job, error: ServiceError) -> None:
        if job.state == "queued":
            with contextlib.suppress(ValueError):
                self._pending.remove(job)
            self._metrics.queue_depth.set(len(self._pending))
        job.state = "dropped"
        self._arrived.set()  # wake the worker: the head it waits on may be this job
        if not job.future.done():
            job.future.set_exception(error)
            job.future.exception()  # mark retrieved: nobody may be awaiting a dropped job

    # ----------------------------------------------------------------- worker
    async def _work(self) -> None:
        while True:
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                if not self._pending:
                    continue
            head = self._pending[0]
            await self._gather_batch_mates(head)
            batch = self._take(head.key)
            if batch:
                self._idle.clear()
                try:
                    await self._run(batch)
                except Exception:  # never let the worker die: fail this batch, keep serving
                    log.exception("batch failed unexpectedly")
                    for job in batch:
                        if not job.future.done():
                            job.future.set_exception(Internal("internal error while computing the batch"))
                finally:
                    self._idle.set()

    async def _gather_batch_mates(self, head: _Job) -> None:
        """Wait until the head's batch is full or its max_wait (from its arrival) has passed."""
        until = head.enqueued_at + self.max_wait_s
        while head.state == "queued" and self._count(head.key) < self.max_batch_size:
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout=remaining)

    def _count(self, key: Hashable) -> int:
        return sum(1 for job in self._pending if job.key == key)

    def _take(self, key: Hashable) -> list[_Job]:
        """Remove up to max_batch_size live jobs with ``key`` (FIFO); expired / abandoned ones get dropped."""
        now = time.monotonic()
        batch: list[_Job] = []
        for job in list(self._pending):
            if len(batch) >= self.max_batch_size:
                break
            if job.key != key:
                continue
            if job.future.done():
                self._drop(job, ClientDisconnected("abandoned"))
            elif job.deadline <= now:
                self.stats.dropped_deadline += 1
                self._drop(job, DeadlineExceeded("the deadline passed while queued; not computed"))
            elif job.disconnected is not None and job.disconnected():
                self.stats.dropped_disconnected += 1
                self._drop(job, ClientDisconnected("client disconnected before compute"))
            else:
                self._pending.remove(job)
                job.state = "running"
                job.started_at = now
                batch.append(job)
        self._metrics.queue_depth.set(len(self._pending))
        return batch

    async def _run(self, jobs: list[_Job]) -> None:
        for job in jobs:
            self._metrics.queue_wait.observe(job.started_at - job.enqueued_at)
        await self._compute(jobs)

    async def _compute(self, jobs: list[_Job]) -> None:
        batch_id = next(self._batch_ids)
        started = time.monotonic()
        self._metrics.batch_size.observe(len(jobs))
        self._metrics.batches.inc()
        try:
            outputs = await self._thread.call(self._run_batch, [job.payload for job in jobs])
            if len(outputs) != len(jobs):
                raise RuntimeError(f"the batch function returned {len(outputs)} results for {len(jobs)} requests")
        except Exception as exc:
            if len(jobs) == 1:
                self._finish(jobs[0], self._failure_mapper(jobs[0].payload, exc))
                return
            # Split and retry: isolates the request that fails (or halves memory after an OOM).
            self.stats.splits += 1
            log.warning("batch of %d failed (%s: %s); splitting", len(jobs), type(exc).__name__, exc)
            middle = len(jobs) // 2
            await self._compute(jobs[:middle])
            await self._compute(jobs[middle:])
            return
        compute_s = time.monotonic() - started
        self._metrics.compute_time.observe(compute_s)
        self._batch_s_ema = compute_s if self._batch_s_ema == 0 else 0.8 * self._batch_s_ema + 0.2 * compute_s
        self.stats.record(len(jobs))
        for job, output in zip(jobs, outputs, strict=True):
            if isinstance(output, BaseException):
                error = (
                    output if isinstance(output, ServiceError) else self._failure_mapper(job.payload, output)
                )
                self._finish(job, error)
            else:
                queue_s = job.started_at - job.enqueued_at
                self._finish(job, BatchResult(output, batch_id, len(jobs), queue_s, compute_s))

    def _finish(self, job: _Job, outcome: BatchResult[Any] | ServiceError) -> None:
        job.state = "done"
        if job.future.done():
            return
        if isinstance(outcome, ServiceError):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)


def _default_failure(payload: Any, exc: BaseException) -> ServiceError:
    if isinstance(exc, ServiceError):
        return exc
    log.error("request failed in the model: %s: %s", type(exc).__name__, exc)
    return Internal(f"internal error while computing this request ({type(exc).__name__})")
