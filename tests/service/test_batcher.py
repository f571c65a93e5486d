"""Unit tests of the dynamic batcher with a recording batch function in place of the model."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from service.batcher import Batcher
from service.errors import DeadlineExceeded, Draining, InsufficientMemory, QueueFull, ServiceError
from service.metrics import ServiceMetrics


class RecordingModel:
    """Doubles each payload; records every call; fails on demand like a model would."""

    def __init__(self, delay_s: float = 0.0, max_fit: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.delay_s = delay_s
        self.max_fit = max_fit  # batches larger than this "run out of memory"
        self.threads: set[str] = set()

    def __call__(self, payloads: list[int]) -> Sequence[int | BaseException]:
        self.calls.append(list(payloads))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        if self.max_fit is not None and len(payloads) > self.max_fit:
            raise RuntimeError("CUDA out of memory (simulated)")
        if -1 in payloads:  # a request that breaks the whole forward pass
            raise ValueError("poisoned batch")
        return [p * 2 for p in payloads]


def memory_failure(payload: int, exc: BaseException) -> ServiceError:
    if "out of memory" in str(exc):
        return InsufficientMemory(f"{payload} does not fit")
    return ServiceError(f"{payload} failed")


def make(recorder: RecordingModel, **overrides: float) -> Batcher[int, int]:
    options = {"max_batch_size": 4, "max_wait_ms": 50.0, "queue_size": 16, **overrides}
    return Batcher(
        recorder,
        max_batch_size=int(options["max_batch_size"]),
        max_wait_ms=options["max_wait_ms"],
        queue_size=int(options["queue_size"]),
        metrics=ServiceMetrics(),
        failure_mapper=memory_failure,
    )


def later(seconds: float) -> float:
    return time.monotonic() + seconds


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_same_key_requests_share_one_pass_in_the_model_thread() -> None:
    recorder = RecordingModel()

    async def scenario() -> None:
        batcher = make(recorder)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit("a", i, deadline=later(5)) for i in range(4)))
        assert [r.value for r in results] == [0, 2, 4, 6]
        assert {r.batch_id for r in results} == {1} and {r.batch_size for r in results} == {4}
        await batcher.close(1)

    run(scenario())
    assert recorder.calls == [[0, 1, 2, 3]]
    assert recorder.threads == {"stya2k-model"}


def test_full_batch_does_not_wait_and_keys_are_separated() -> None:
    recorder = RecordingModel()

    async def scenario() -> None:
        batcher = make(recorder, max_wait_ms=2000, max_batch_size=2)
        batcher.start()
        started = time.monotonic()
        results = await asyncio.gather(
            batcher.submit("a", 1, deadline=later(5)),
            batcher.submit("b", 2, deadline=later(5)),
            batcher.submit("a", 3, deadline=later(5)),
        )
        assert [r.value for r in results] == [2, 4, 6]
        # "a" filled its batch at once; "b" alone waited for its max_wait (2 s) before running.
        assert results[0].batch_id == results[2].batch_id != results[1].batch_id
        assert time.monotonic() - started >= 1.9
        await batcher.close(1)

    run(scenario())
    assert recorder.calls == [[1, 3], [2]]


def test_queue_full_is_refused_at_once() -> None:
    recorder = RecordingModel()

    async def scenario() -> None:
        batcher = make(recorder, queue_size=2, max_wait_ms=300, max_batch_size=8)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit("a", 1, deadline=later(5)))
        second = asyncio.ensure_future(batcher.submit("a", 2, deadline=later(5)))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull) as info:
            await batcher.submit("a", 3, deadline=later(5))
        assert info.value.status == 429 and int(info.value.headers()["Retry-After"]) >= 1
        assert [(await first).value, (await second).value] == [2, 4]
        await batcher.close(1)

    run(scenario())
    assert recorder.calls == [[1, 2]]


def test_deadline_in_queue_gives_504_and_is_never_computed() -> None:
    recorder = RecordingModel(delay_s=0.3)

    async def scenario() -> None:
        batcher = make(recorder, max_batch_size=1, max_wait_ms=0)
        batcher.start()
        busy = asyncio.ensure_future(batcher.submit("a", 1, deadline=later(5)))
        await asyncio.sleep(0.02)  # the model is now busy for 300 ms
        with pytest.raises(DeadlineExceeded):
            await batcher.submit("a", 2, deadline=later(0.1))
        assert (await busy).value == 2
        await asyncio.sleep(0.05)
        assert batcher.stats.dropped_deadline == 1
        await batcher.close(1)

    run(scenario())
    assert recorder.calls == [[1]]


def test_disconnected_client_is_dropped_before_compute() -> None:
    recorder = RecordingModel()

    async def scenario() -> None:
        batcher = make(recorder, max_wait_ms=100)
        batcher.start()
        gone = asyncio.ensure_future(batcher.submit("a", 7, deadline=later(5), disconnected=lambda: True))
        kept = asyncio.ensure_future(batcher.submit("a", 8, deadline=later(5)))
        cancelled = asyncio.ensure_future(batcher.submit("a", 9, deadline=later(5)))
        await asyncio.sleep(0.01)
        cancelled.cancel()  # the request handler went away while queued
        assert (await kept).value == 16
        with pytest.raises(ServiceError):
            await gone
        assert batcher.stats.dropped_disconnected == 1
        await batcher.close(1)

    run(scenario())
    assert recorder.calls == [[8]]


def test_a_failing_request_never_fails_its_batch_mates() -> None:
    recorder = RecordingModel()

    async def scenario() -> None:
        batcher = make(recorder)
        batcher.start()
        outcomes = await asyncio.gather(
            *(batcher.submit("a", p, deadline=later(5)) for p in (1, -1, 2, 3)), return_exceptions=True
        )
        assert [o.value for o in outcomes if not isinstance(o, BaseException)] == [2, 4, 6]
        assert isinstance(outcomes[1], ServiceError) and "-1 failed" in str(outcomes[1])
        assert batcher.stats.splits >= 1
        await batcher.close(1)

    run(scenario())
    assert recorder.calls[0] == [1, -1, 2, 3]


def test_out_of_memory_splits_the_batch_until_it_fits() -> None:
    recorder = RecordingModel(max_fit=1)

    async def scenario() -> None:
        batcher = make(recorder)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit("a", p, deadline=later(5)) for p in (1, 2, 3, 4)))
        assert [r.value for r in results] == [2, 4, 6, 8]
        assert {r.batch_size for r in results} == {1}
        await batcher.close(1)

    run(scenario())
    assert recorder.calls[0] == [1, 2, 3, 4] and [1] in recorder.calls


def test_request_that_cannot_fit_alone_gets_507() -> None:
    recorder = RecordingModel(max_fit=0)

    async def scenario() -> None:
        batcher = make(recorder)
        batcher.start()
        with pytest.raises(InsufficientMemory) as info:
            await batcher.submit("a", 5, deadline=later(5))
        assert info.value.status == 507
        await batcher.close(1)

    run(scenario())


def test_close_finishes_queued_work_then_refuses() -> None:
    recorder = RecordingModel(delay_s=0.05)

    async def scenario() -> None:
        batcher = make(recorder, max_batch_size=1, max_wait_ms=0)
        batcher.start()
        pending = [asyncio.ensure_future(batcher.submit("a", p, deadline=later(5))) for p in (1, 2, 3)]
        await asyncio.sleep(0.01)
        await batcher.close(5)
        assert [(await p).value for p in pending] == [2, 4, 6]
        with pytest.raises(Draining):
            await batcher.submit("a", 4, deadline=later(5))

    run(scenario())


def test_event_loop_stays_responsive_during_compute() -> None:
    recorder = RecordingModel(delay_s=0.4)

    async def scenario() -> None:
        batcher = make(recorder, max_wait_ms=0)
        batcher.start()
        job = asyncio.ensure_future(batcher.submit("a", 1, deadline=later(5)))
        ticks = 0
        while not job.done():
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks >= 20  # the loop kept running while the "model" computed in its thread
        await batcher.close(1)

    run(scenario())
