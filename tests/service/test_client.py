"""The Python client against real servers: the StyA2K service, and a tiny scripted server for retries."""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import uvicorn
from PIL import Image
from service_helpers import RunningServer, free_port, free_socket, image_bytes
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.client import (
    AsyncClient,
    BadRequest,
    Client,
    ConnectionFailed,
    InvalidParameter,
    QueueFull,
    RequestTimeout,
    ServerError,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
    read_image,
)


def _size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        return img.size


# ---------------------------------------------------------------------------------------------- real service
def test_stylize_returns_image_and_timings(server: RunningServer, content_png: bytes, style_png: bytes) -> None:
    with Client(server.url) as client:
        result = client.stylize(content_png, style_png, alpha=0.5, format="jpeg")
    assert result.format == "jpeg"
    assert result.size == (64, 48)  # 80x60 content, the test server's max side is 64
    assert result.data[:2] == b"\xff\xd8"
    assert result.request_id
    assert result.total_ms is not None and result.total_ms >= (result.compute_ms or 0) > 0


def test_interpolate_and_multistyle(
    server: RunningServer, content_png: bytes, style_png: bytes, style2_jpeg: bytes, tmp_path
) -> None:
    style_path = tmp_path / "style.jpg"
    style_path.write_bytes(style2_jpeg)
    mask = Image.new("L", (80, 60), 0)
    mask.paste(255, (0, 0, 40, 60))
    inverse = Image.eval(mask, lambda v: 255 - v)
    labels = Image.new("L", (80, 60), 0)
    labels.paste(1, (40, 0, 80, 60))
    with Client(server.url) as client:
        blended = client.interpolate(content_png, [style_png, style_path], [3, 1])
        masked = client.multistyle(content_png, [style_png, io.BytesIO(style2_jpeg)], masks=[mask, inverse])
        labelled = client.multistyle(content_png, [style_png, style2_jpeg], labels=labels, feather=0)
    for result in (blended, masked, labelled):
        assert result.format == "png"
        assert result.to_pil().size == (64, 48)
    out = blended.save(tmp_path / "out.png")
    assert _size(out.read_bytes()) == (64, 48)


def test_async_client_matches_sync(
    server: RunningServer, content_png: bytes, style_png: bytes, style2_jpeg: bytes
) -> None:
    async def scenario() -> tuple[bytes, bytes, dict, bool]:
        async with AsyncClient(server.url) as client:
            single, blended = await asyncio.gather(
                client.stylize(content_png, style_png, alpha=0.7),
                client.interpolate(content_png, [style_png, style2_jpeg], [1, 1]),
            )
            info = await client.info()
            health = await client.health()
            return single.data, blended.data, info, health.ready

    single, blended, info, ready = asyncio.run(scenario())
    with Client(server.url) as client:
        again = client.stylize(content_png, style_png, alpha=0.7)
    assert again.data == single  # same request, same deterministic model: same bytes
    assert _size(blended) == (64, 48)
    assert info["model"]["weights"] == "random" and ready


def test_info_and_health(server: RunningServer) -> None:
    with Client(server.url) as client:
        info = client.info()
        health = client.health()
    assert info["limits"]["max_side"] == 64
    assert health.live and health.ready and health.detail == "ready"


@pytest.mark.parametrize(
    ("kwargs", "error", "code", "words"),
    [
        ({"content": b"not an image"}, UnsupportedMediaType, "unsupported_media_type", "content"),
        ({"content": image_bytes((64, 64))[:60]}, BadRequest, "invalid_image", "content"),
        ({"alpha": 1.5}, InvalidParameter, "invalid_parameter", "alpha"),
        ({"max_side": 4096}, InvalidParameter, "invalid_parameter", "max_side"),
    ],
)
def test_errors_are_typed(
    server: RunningServer, content_png: bytes, style_png: bytes, kwargs: dict, error: type, code: str, words: str
) -> None:
    arguments = {"content": content_png, "style": style_png, **kwargs}
    with Client(server.url) as client, pytest.raises(error) as caught:
        client.stylize(**arguments)
    assert caught.value.status in (400, 415, 422)
    assert caught.value.code == code
    assert words in caught.value.message
    assert caught.value.request_id
    assert code in str(caught.value)


def test_api_key(server_factory, content_png: bytes, style_png: bytes) -> None:
    secured = server_factory(api_key="s3cret")
    with Client(secured.url) as anonymous, pytest.raises(Unauthorized):
        anonymous.info()
    with Client(secured.url, api_key="s3cret") as client:
        assert client.stylize(content_png, style_png).size == (64, 48)


def test_unreachable_server() -> None:
    port = free_port()  # nothing listens there once the probe socket is closed
    with Client(f"http://127.0.0.1:{port}", max_retries=0) as client:
        with pytest.raises(ConnectionFailed, match="cannot talk to"):
            client.info()
        with pytest.raises(ConnectionFailed):
            client.health()


def test_image_inputs(tmp_path) -> None:
    png = image_bytes((20, 20))
    path = tmp_path / "a.png"
    path.write_bytes(png)
    assert read_image(png, "x") == png
    assert read_image(path, "x") == png
    assert read_image(str(path), "x") == png
    assert read_image(io.BytesIO(png), "x") == png
    assert _size(read_image(Image.new("RGB", (17, 19)), "x")) == (17, 19)
    with pytest.raises(ValueError, match="cannot read"):
        read_image(tmp_path / "missing.png", "content")
    with pytest.raises(TypeError, match="content"):
        read_image(42, "content")
    with pytest.raises(ValueError, match="format"):
        Client("http://127.0.0.1:1").stylize(png, png, format="gif")


# ---------------------------------------------------------------------------------------------- scripted server
@dataclass
class Script:
    """What the scripted server answers: a list of (status, headers) to play before answering 200."""

    failures: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    hits: int = 0
    delay_s: float = 0.0


def _scripted_app(script: Script) -> Starlette:
    png = image_bytes((32, 24))

    async def transfer(request: Request) -> Response:
        await request.body()
        script.hits += 1
        if script.delay_s:
            await asyncio.sleep(script.delay_s)
        if script.failures:
            status, headers = script.failures.pop(0)
            body = {"error": {"code": "queue_full" if status == 429 else "not_ready", "message": "busy"}}
            return JSONResponse(body, status_code=status, headers=headers)
        return Response(png, media_type="image/png", headers={"X-Total-Ms": "12.5", "X-Request-ID": "abc"})

    async def ready(request: Request) -> Response:
        return JSONResponse({"error": {"code": "not_ready", "message": "model is loading"}}, status_code=503)

    async def live(request: Request) -> Response:
        return JSONResponse({"status": "live"})

    async def bad_gateway(request: Request) -> Response:
        return Response("<html>502 Bad Gateway</html>", status_code=502, media_type="text/html")

    return Starlette(
        routes=[
            Route("/v1/stylize", transfer, methods=["POST"]),
            Route("/v1/info", bad_gateway),
            Route("/health/ready", ready),
            Route("/health/live", live),
        ]
    )


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[str, Script]]:
    script = Script()
    sock = free_socket()
    server = uvicorn.Server(uvicorn.Config(_scripted_app(script), log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not server.started:
        time.sleep(0.02)
    yield url, script
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def script(scripted: tuple[str, Script]) -> Iterator[Script]:
    _, state = scripted
    state.failures, state.hits, state.delay_s = [], 0, 0.0
    yield state


def test_retries_honour_retry_after(scripted: tuple[str, Script], script: Script) -> None:
    url, _ = scripted
    script.failures = [(429, {"Retry-After": "0"}), (503, {"Retry-After": "0"})]
    with Client(url, max_retries=3) as client:
        result = client.stylize(b"x", b"y")
    assert script.hits == 3
    assert result.total_ms == 12.5 and result.request_id == "abc"


def test_retry_wait_is_capped(scripted: tuple[str, Script], script: Script) -> None:
    url, _ = scripted
    script.failures = [(429, {"Retry-After": "3600"})]
    started = time.monotonic()
    with Client(url, max_retry_wait_s=0.05) as client:
        client.stylize(b"x", b"y")
    assert time.monotonic() - started < 5
    assert script.hits == 2


def test_backoff_without_retry_after(scripted: tuple[str, Script], script: Script) -> None:
    url, _ = scripted
    script.failures = [(503, {}), (503, {})]
    started = time.monotonic()
    with Client(url, backoff_s=0.1) as client:
        client.stylize(b"x", b"y")
    assert time.monotonic() - started >= 0.3  # 0.1 s then 0.2 s
    assert script.hits == 3


def test_retries_are_bounded(scripted: tuple[str, Script], script: Script) -> None:
    url, _ = scripted
    script.failures = [(429, {"Retry-After": "0"})] * 3 + [(503, {"Retry-After": "0"})] * 3
    with Client(url, max_retries=2) as client, pytest.raises(QueueFull) as caught:
        client.stylize(b"x", b"y")
    assert script.hits == 3
    assert caught.value.retry_after_s == 0
    with Client(url, max_retries=0) as client, pytest.raises(ServiceUnavailable):
        script.failures = [(503, {"Retry-After": "0"})]
        client.stylize(b"x", b"y")


def test_async_retries(scripted: tuple[str, Script], script: Script) -> None:
    url, _ = scripted
    script.failures = [(429, {"Retry-After": "0"})]

    async def scenario() -> float | None:
        async with AsyncClient(url) as client:
            return (await client.stylize(b"x", b"y")).total_ms

    assert asyncio.run(scenario()) == 12.5
    assert script.hits == 2


def test_timeout(scripted: tuple[str, Script], script: Script) -> None:
    url, _ = scripted
    script.delay_s = 1.0
    with Client(url, timeout_s=0.2) as client, pytest.raises(RequestTimeout, match="timeout"):
        client.stylize(b"x", b"y")


def test_non_api_error_body_and_not_ready(scripted: tuple[str, Script]) -> None:
    url, _ = scripted
    with Client(url) as client:
        with pytest.raises(ServerError) as caught:
            client.info()
        health = client.health()
    assert caught.value.status == 502  # a proxy's HTML error still gives a readable typed error
    assert "Bad Gateway" in caught.value.message
    assert health.live and not health.ready and health.detail == "model is loading"
    with Client(url) as client, pytest.raises(ServiceUnavailable, match="loading"):
        client.wait_until_ready(timeout_s=0.3, poll_s=0.05)


# ---------------------------------------------------------------------------------------------- dropping server
class DroppingServer:
    """A raw HTTP/1.1 server that reads each request whole, then closes the connection without a word for the
    first ``drops`` requests (what a client sees when a balancer reloads and closes the keep-alive connection it
    was reusing) and answers the rest with a PNG."""

    def __init__(self, drops: int) -> None:
        self.drops = drops
        self.requests: list[bytes] = []  # request lines, in arrival order
        self._sock = free_socket()
        self._sock.listen(8)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._png = image_bytes((32, 24))

    def __enter__(self) -> DroppingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn:
                request_line = self._read_request(conn)
                self.requests.append(request_line)
                if len(self.requests) <= self.drops:
                    continue  # closed with no status line
                head = (
                    "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n"
                    f"Content-Length: {len(self._png)}\r\nConnection: close\r\n\r\n"
                )
                conn.sendall(head.encode() + self._png)

    @staticmethod
    def _read_request(conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")),
            0,
        )
        while len(body) < length:
            body += conn.recv(65536)
        return head.split(b"\r\n", 1)[0]


def test_a_transfer_dropped_without_an_answer_is_sent_again() -> None:
    with DroppingServer(drops=1) as server, Client(server.url) as client:
        result = client.stylize(b"x", b"y")
    assert result.size == (32, 24)
    assert server.requests == [b"POST /v1/stylize HTTP/1.1"] * 2


def test_resending_a_dropped_transfer_is_bounded_by_max_retries() -> None:
    with (
        DroppingServer(drops=10) as server,
        Client(server.url, max_retries=2, backoff_s=0.01) as client,
        pytest.raises(ConnectionFailed, match="cannot talk to"),
    ):
        client.interpolate(b"x", [b"y", b"z"], [1, 1])
    assert len(server.requests) == 3


def test_a_dropped_job_submission_is_never_sent_twice() -> None:
    with DroppingServer(drops=1) as server, Client(server.url) as client, pytest.raises(ConnectionFailed):
        client.submit(b"x", b"y")
    assert server.requests == [b"POST /v1/jobs HTTP/1.1"]  # a repeat could start a second job


def test_the_async_client_sends_a_dropped_transfer_again() -> None:
    async def scenario(url: str) -> tuple[int, int] | None:
        async with AsyncClient(url) as client:
            return (await client.stylize(b"x", b"y")).size

    with DroppingServer(drops=1) as server:
        assert asyncio.run(scenario(server.url)) == (32, 24)
    assert len(server.requests) == 2
