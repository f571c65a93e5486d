"""The HTTP request's :class:`~service.pipeline.Runner`: decoding in the server's thread pool, the job on the
batcher under the request's deadline, dropped if the client disconnects while it waits."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import torch
from fastapi import Request
from starlette.types import Receive

from model import StyleFeatures
from service.api.requests import deadline
from service.api.state import ServiceState
from service.batcher import Batcher, BatchResult
from service.contract import TransferJob
from service.errors import ClientDisconnected

T = TypeVar("T")


class BatcherRunner:
    """:class:`service.pipeline.Runner` of one HTTP request: the thread pool, the batcher, the deadline."""

    def __init__(self, state: ServiceState, batcher: Batcher[TransferJob, torch.Tensor], request: Request) -> None:
        self.state = state
        self.batcher = batcher
        self.request = request
        self.decode_budget = state.decode_budget

    @functools.cached_property
    def deadline(self) -> float:
        """Absolute (time.monotonic()) deadline; parsed at the first offload, i.e. after validation, so a request
        with several faults hears of its parameters before its X-Deadline-Ms header (the order the API had)."""
        return deadline(self.request, self.state.settings)

    def lookup_style(self, key: str) -> StyleFeatures | None:
        return self.state.engine.lookup_style(key)

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        _ = self.deadline  # the first offload is the decode, after validate(): check the header now
        return await asyncio.get_running_loop().run_in_executor(self.state.io_pool, fn, *args)

    async def compute(self, job: TransferJob) -> BatchResult[torch.Tensor]:
        key = self.state.engine.batch_key(job)
        return await _wait_unless_disconnected(self.request, self.batcher.submit(key, job, deadline=self.deadline))


async def _wait_unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` but give up (cancelling it: a queued job is dropped) if the client disconnects."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    raise ClientDisconnected("client disconnected while the request was queued")


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
