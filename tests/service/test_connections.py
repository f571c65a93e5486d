"""One send() per response (service/connections.py `CoalescedWrites`), driven through the real h11 protocol."""

from __future__ import annotations

import asyncio
from typing import Any

from service_helpers import RunningServer
from uvicorn.config import Config
from uvicorn.server import ServerState

from service.api.gateway import Gateway
from service.connections import CoalescedWrites, ConnectionLimits, guarded_protocol


class RecordingTransport(asyncio.Transport):
    """What the event loop's socket transport would send: one entry per ``write`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _one_step() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def test_writes_of_one_step_leave_together_and_close_flushes_first() -> None:
    async def scenario() -> None:
        inner = RecordingTransport()
        outer = CoalescedWrites(inner, asyncio.get_running_loop())
        outer.write(b"head ")
        outer.write(b"")
        outer.writelines([b"body", b"!"])
        assert inner.writes == [] and outer.get_write_buffer_size() == 10
        await _one_step()
        assert inner.writes == [b"head body!"]
        outer.write(b"408")
        outer.close()
        assert inner.writes == [b"head body!", b"408"] and inner.closed
        await _one_step()
        assert len(inner.writes) == 2  # the scheduled flush found nothing left

        dropped = RecordingTransport()
        aborted = CoalescedWrites(dropped, asyncio.get_running_loop())
        aborted.write(b"half")
        aborted.abort()
        await _one_step()
        assert dropped.writes == [] and dropped.aborted

    asyncio.run(scenario())


def _header_then_body(yield_between: bool) -> Any:
    """An app that sends the response start and the body as two messages, as every Starlette response does."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b"x" * 232
        headers = [(b"content-type", b"image/png"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if yield_between:
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": body})

    return app


async def _writes_of_one_request(app: Any) -> list[bytes]:
    """The real guarded h11 protocol (as `python -m service` runs it) on a recording transport."""
    config = Config(app=app, lifespan="off", log_level="warning")
    protocol_class = guarded_protocol(ConnectionLimits(max_connections=8, header_timeout_s=5.0), None)
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={},
                              _loop=asyncio.get_running_loop())  # fmt: skip
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(b"GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n")
    for _ in range(20):
        await asyncio.sleep(0.002)
    protocol.connection_lost(None)
    return transport.writes


def _assert_one_write(writes: list[bytes]) -> None:
    assert len(writes) == 1, writes
    assert writes[0].startswith(b"HTTP/1.1 200 ") and writes[0].endswith(b"x" * 232)


def test_the_guarded_protocol_sends_header_and_body_in_one_write() -> None:
    _assert_one_write(asyncio.run(_writes_of_one_request(_header_then_body(yield_between=False))))


def test_the_gateway_holds_the_header_until_the_body_even_when_the_app_yields(server: RunningServer) -> None:
    gateway = Gateway(_header_then_body(yield_between=True), server.state)
    writes = asyncio.run(_writes_of_one_request(gateway))
    _assert_one_write(writes)
    assert b"x-request-id: " in writes[0]


def test_a_handler_failing_after_its_start_gets_a_clean_500(server: RunningServer) -> None:
    async def fails_after_start(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("boom before the body")

    writes = asyncio.run(_writes_of_one_request(Gateway(fails_after_start, server.state)))
    assert len(writes) == 1 and writes[0].startswith(b"HTTP/1.1 500 "), writes
    assert b'"code":"internal"' in writes[0].replace(b" ", b"")
