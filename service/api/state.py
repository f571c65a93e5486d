"""What the app's parts share: one :class:`ServiceState` per app, and the typed dependency routes take it by."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
from fastapi import Depends, Request

from service import imaging
from service.batcher import Batcher, ModelThread
from service.contract import TransferJob
from service.engine import Engine
from service.job_store import Jobs, create_job_store
from service.jobs import JobRunner
from service.metrics import ServiceMetrics
from service.settings import Settings

log = logging.getLogger("service.app")
BODY_STATE_KEY = "stya2k_body"  # scope["state"]: the body the gateway buffered (read by the JSON parsing)


@dataclass
class ServiceState:
    """Everything the routes, the gateway and the lifespan share; one per app (no module globals)."""

    settings: Settings
    metrics: ServiceMetrics
    engine: Engine
    io_pool: ThreadPoolExecutor
    decode_budget: imaging.DecodeBudget
    jobs: Jobs
    batcher: Batcher[TransferJob, torch.Tensor] | None = None
    model_thread: ModelThread | None = None
    ready: bool = False
    draining: bool = False
    load_error: str | None = None
    on_fatal: Callable[[str], None] | None = None  # set by server.py: exit when the model cannot load
    background: set[asyncio.Task[Any]] = field(default_factory=set)

    @classmethod
    def create(cls, settings: Settings) -> ServiceState:
        metrics = ServiceMetrics()
        return cls(
            settings=settings,
            metrics=metrics,
            engine=Engine(settings, metrics),
            io_pool=ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="stya2k-io"),
            decode_budget=imaging.DecodeBudget(settings.decode_budget_bytes),
            jobs=create_job_store(settings, metrics),
        )

    def job_runner(self) -> JobRunner | None:
        """What runs a job on this replica (None until the model is loaded and the batcher started)."""
        if self.batcher is None or self.model_thread is None:
            return None
        return JobRunner(
            engine=self.engine,
            io_pool=self.io_pool,
            batcher=self.batcher,
            model_thread=self.model_thread,
            decode_budget=self.decode_budget,
        )

    def begin_drain(self) -> None:
        self.draining = True
        self.metrics.ready.set(0)
        log.info("draining: readiness is now 503; still serving")


def service_state(request: Request) -> ServiceState:
    """The app's state (``create_app`` puts it on ``app.state.service``)."""
    state = request.app.state.service
    assert isinstance(state, ServiceState)
    return state


State = Annotated[ServiceState, Depends(service_state)]
