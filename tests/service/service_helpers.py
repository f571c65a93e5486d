"""Helpers shared by the service tests (imported by name: conftest puts this folder on sys.path)."""

from __future__ import annotations

import io
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from PIL import Image

from service.app import ServiceState, create_app
from service.settings import Settings

# Small everything: a random-weight model at 64 px keeps one forward pass around 0.1-0.3 s on 2 cores.
FAST_SETTINGS = dict(
    weights="random",
    max_side=64,
    default_side=64,
    style_size=64,
    bucket_px=64,
    warmup=False,
    log_level="warning",
    threads=1,
)


def image_bytes(
    size: tuple[int, int] = (64, 48),
    fmt: str = "PNG",
    mode: str = "RGB",
    color: Any = (200, 40, 30),
    pattern: bool = True,
    **save: Any,
) -> bytes:
    """A small synthetic image; ``pattern`` adds a gradient so images differ in content."""
    img = Image.new(mode, size, color)
    if pattern and mode == "RGB":
        width, height = size
        for x in range(0, width, 4):
            for y in range(0, height, 4):
                img.putpixel((x, y), ((x * 4) % 256, (y * 4) % 256, (x + y) % 256))
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def free_port() -> int:
    with free_socket() as sock:
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    url: str
    state: ServiceState
    server: uvicorn.Server
    thread: threading.Thread

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60.0, **kwargs)

    def metric(self, name: str, labels: str = "") -> float:
        """Value of one sample of /metrics (0 when absent)."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in text.splitlines():
            if line.startswith(wanted + " "):
                return float(line.split()[-1])
        return 0.0

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        model_thread = self.state.model_thread
        if model_thread is not None:  # a step still in torch when the test process exits would abort it
            model_thread.join(30)


def start_server(**overrides: Any) -> RunningServer:
    settings = Settings(**{**FAST_SETTINGS, **overrides})
    app = create_app(settings)
    sock = free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    running = RunningServer(url, app.state.service, server, thread)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health/ready", timeout=2).status_code == 200:
                return running
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    running.stop()
    raise RuntimeError(f"server did not become ready: {running.state.load_error}")
