"""The app's lifespan: load the model once (in the background, so liveness answers at once), warm it up,
start the batcher and the jobs' worker, report ready; at shutdown drain the jobs and the batcher and stop the model
thread."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from service.api.state import ServiceState
from service.batcher import Batcher, ModelThread
from service.engine import process_uptime_s
from service.workload import CPU_PROBE_SIDE, probe_rate

log = logging.getLogger("service.app")


def make_lifespan(state: ServiceState) -> Callable[[FastAPI], Any]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Loading happens in the background so /health/live answers at once and /health/ready says 503
        # until the weights are loaded and warm; the port is open the whole time.
        task = asyncio.get_running_loop().create_task(start_model(state), name="stya2k-load")
        state.background.add(task)
        task.add_done_callback(state.background.discard)
        try:
            yield
        finally:
            state.ready = False
            state.draining = True
            task.cancel()
            # One drain budget for both: queued jobs are cancelled, a running one gets what it needs of it.
            drain_until = time.monotonic() + state.settings.drain_timeout_s
            await state.jobs.close(state.settings.drain_timeout_s)
            if state.batcher is not None:
                await state.batcher.close(max(0.0, drain_until - time.monotonic()))
            if state.model_thread is not None:
                state.model_thread.stop()
            state.io_pool.shutdown(wait=False, cancel_futures=True)

    return lifespan


async def start_model(state: ServiceState) -> None:
    settings = state.settings
    thread = ModelThread()
    state.model_thread = thread
    try:
        await thread.call(state.engine.load)
        if settings.warmup:
            await thread.call(state.engine.warm_up)
            await _probe_rate(state, thread)
    except Exception as exc:
        state.load_error = f"{type(exc).__name__}: {exc}"
        log.exception("the model could not be loaded; the service stays not ready")
        if state.on_fatal is not None:
            state.on_fatal(state.load_error)
        return
    state.batcher = Batcher(
        state.engine.run_batch,
        max_batch_size=state.engine.max_batch_size,  # STYA2K_MAX_BATCH_SIZE=0 (auto) resolved per device
        max_wait_ms=settings.max_wait_ms,
        queue_size=settings.queue_size,
        metrics=state.metrics,
        failure_mapper=state.engine.failure,
        model_thread=thread,
    )
    state.batcher.start()
    runner = state.job_runner()
    assert runner is not None  # the batcher and the model thread were just made
    state.jobs.start(runner)
    state.metrics.model_info.info(
        {k: str(v) for k, v in {**state.engine.public_info(), "device": str(state.engine.device)}.items()}
    )
    state.ready = True
    state.metrics.ready.set(1)
    state.engine.startup["ready_since_process_start_s"] = _uptime()
    log.info(
        "ready",
        extra={"device": str(state.engine.device), "dtype": state.engine.dtype_name, **state.engine.startup},
    )


async def _probe_rate(state: ServiceState, thread: ModelThread) -> None:
    """Seed the jobs' compute rate with one timed pass, so the first job's time is estimated at submission (a
    failure here only leaves it unknown: jobs are then judged by their own pace while they run)."""
    try:
        side = CPU_PROBE_SIDE if state.engine.device.type == "cpu" else state.settings.default_side
        seconds = await thread.call(probe_rate, state.engine, state.jobs.rate, state.settings.style_size, side)
    except Exception:
        log.warning("the start-up rate probe failed; job times are checked while they run", exc_info=True)
        return
    state.engine.startup["rate_probe_s"] = round(seconds, 3)


def _uptime() -> float | None:
    uptime = process_uptime_s()
    return None if uptime is None else round(uptime, 3)
