"""Shared fixtures: tiny generated images and real uvicorn servers on 127.0.0.1 (free ports)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from service_helpers import RunningServer, image_bytes, start_server


@pytest.fixture(scope="session")
def server() -> Iterator[RunningServer]:
    """The shared server: batches wait up to 150 ms so concurrent requests share a forward pass."""
    running = start_server(max_wait_ms=150, max_batch_size=8, queue_size=64)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def server_factory() -> Iterator[Callable[..., RunningServer]]:
    started: list[RunningServer] = []

    def make(**overrides: Any) -> RunningServer:
        running = start_server(**overrides)
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop()


@pytest.fixture(scope="session")
def content_png() -> bytes:
    return image_bytes((80, 60), "PNG", color=(30, 120, 200))


@pytest.fixture(scope="session")
def style_png() -> bytes:
    return image_bytes((64, 64), "PNG", color=(250, 200, 10))


@pytest.fixture(scope="session")
def style2_jpeg() -> bytes:
    return image_bytes((70, 50), "JPEG", color=(20, 200, 60))
