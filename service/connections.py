"""Connection-level protection for uvicorn's h11 protocol: timeouts, a connection limit, quiet logs.

uvicorn closes a keep-alive connection only after a response, never one that connects and sends nothing or
sends half a header, and it has no header timeout; with the Kubernetes Service talking to uvicorn directly
(no nginx in front) such connections pile up until accept() fails for lack of file descriptors. Here:

* header timeout: a connection must deliver a complete request header within ``header_timeout_s`` of
  opening (or of its previous response); a silent one is closed, a half-sent header gets 408;
* header size: the request line and headers together may take ``max_header_bytes`` (16 KiB); more gets a JSON
  431. h11's own limit (``h11_max_incomplete_event_size``) only bounds a header that is still *incomplete*: one
  that arrives whole in a single read (a 60 KB header does, on loopback) was accepted at any size. Malformed
  requests get the service's JSON 400 instead of uvicorn's plain-text one;
* keep-alive timeout: uvicorn's own (``keep_alive_s`` after each response);
* connection limit: at ``max_connections`` open connections the oldest idle one (no request in progress:
  fresh, between requests, or still sending its header) is closed to make room, as nginx reuses keep-alive
  connections; when every connection is busy with a request, a few probe slots still take health checks
  (other requests there get 503), and beyond those a new connection is refused with a 503 JSON answer and
  ``Connection: close``;
* the body read timeout is enforced by the gateway middleware (service/app.py), which reads the body;
* a logging filter that reports "accept() out of system resource" once per interval instead of one
  traceback per failed accept;
* one send() per response: uvicorn writes the header and the body separately, and a process killed between
  the two leaves a proxy with a response it has begun to forward and can neither finish nor retry; the
  writes of one event-loop step are joined (`CoalescedWrites`), so a kill loses a whole response or none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import resource
import socket
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.metrics import ServiceMetrics

log = logging.getLogger("service.connections")

# File descriptors kept free for everything that is not a client connection: the listening socket, epoll,
# pipes, log files, temporary files of multipart uploads, the weights file, ...
FD_RESERVE_MIN = 64
LINGER_S = 1.0  # a refused connection is kept this long to read what the client sent, so it sees the 503
MAX_LINGERING = 32  # beyond this many, refused connections are closed at once (no fd pile-up under a flood)
# asyncio accepts up to `backlog` connections in one burst before any protocol sees them (and before an
# evicted connection's descriptor is closed), so two such bursts must fit in the descriptors kept free as well
# (see _reserve): the burst is an eighth of the open-files limit, 32..2048.
MIN_BACKLOG, MAX_BACKLOG = 32, 2048
# The kernel's listen queue is another matter: a connection waiting there holds no descriptor of ours, and a
# short queue drops SYNs under a connect burst (the client retries after 1 s). So after asyncio set it to the
# burst, the server lengthens it to this (the kernel caps it at net.core.somaxconn); see relisten().
LISTEN_QUEUE = 4096
# Connections accepted beyond the limit when every connection is busy: they may only ask for the health and
# metrics endpoints (a probe must not fail because slow clients hold every slot), others get 503.
PROBE_SLOTS = 16
# An idle connection younger than this is not evicted: a client that just connected has its header in flight.
EVICT_GRACE_S = 0.25
PROBE_HEADER_TIMEOUT_S = 2.0
OVERFLOW_STATE_KEY = "stya2k_overflow"  # in scope["state"]: the gateway answers only probes on such connections
# The request line and every header line with their line ends and the blank line after them (nginx in front
# passes up to 4 x 8 KiB; a replica's own limit is this).
MAX_HEADER_BYTES = 16 * 1024
# The end of a request header as h11 reads it: a blank line, CRLF or bare LF (h11's blank_line_regex).
_HEADER_END = re.compile(rb"\n\r?\n")


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    header_timeout_s: float
    max_header_bytes: int = MAX_HEADER_BYTES


def raw_response(status: int, reason: str, code: str, message: str, retry_after_s: int | None = None) -> bytes:
    """A complete HTTP/1.1 error response in the service's JSON shape, with ``Connection: close``.

    Built by hand because it is sent where h11 cannot send one: before any request was read.
    """
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry_after_s is not None:
        head.append(f"retry-after: {retry_after_s}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


class CoalescedWrites(asyncio.Transport):
    """A transport whose writes made in one event-loop step leave in one ``write`` of the real transport.

    Everything else is the real transport's. Closing sends what is pending first; aborting drops it, as the
    real transport's abort drops its own buffer.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(data) for data in self._pending)

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()


class ConnectionGuard:
    """State shared by every connection of one server."""

    def __init__(self, limits: ConnectionLimits, metrics: ServiceMetrics | None) -> None:
        self.limits = limits
        self.metrics = metrics
        self.open = 0
        self.overflow = 0
        self.lingering = 0
        # Insertion-ordered, so the first key is the connection that has been idle the longest.
        self.idle: dict[GuardedH11Protocol, float] = {}  # -> monotonic time it became idle

    def count(self, what: str) -> None:
        if self.metrics is not None:
            self.metrics.connection_events.labels(event=what).inc()

    def set_open(self, delta: int) -> None:
        self.open += delta
        if self.metrics is not None:
            self.metrics.connections_open.set(self.open)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header timeout and a connection limit (see the module docstring)."""

    guard: ClassVar[ConnectionGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._counted = False
        self._refused = False
        self._overflow = False
        self._discarding = False  # answered an unreadable request: what else arrives is read and dropped
        self._linger_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ connection life
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        guard = self.guard
        if guard.open >= guard.limits.max_connections and not self._evict_oldest_idle():
            if guard.overflow >= PROBE_SLOTS:
                self._refuse(transport)
                return
            self._overflow = True
            guard.overflow += 1
            guard.count("probe_slot")
            self.app_state = {**self.app_state, OVERFLOW_STATE_KEY: True}
        super().connection_made(CoalescedWrites(transport, self.loop))
        if not self._overflow:
            self._counted = True
            guard.set_open(+1)
        self._refresh()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            self.guard.lingering -= 1
            return
        self._cancel_header_timer()
        if self._linger_timer is not None:  # it holds this protocol, and h11's buffer with the oversized header
            self._linger_timer.cancel()
            self._linger_timer = None
        self.guard.idle.pop(self, None)
        if self._overflow:
            self._overflow = False
            self.guard.overflow -= 1
        if self._counted:
            self._counted = False
            self.guard.set_open(-1)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused or self._discarding:
            return  # read and dropped so that closing does not reset the connection before the answer arrives
        super().data_received(data)
        self._refresh()

    def handle_events(self) -> None:
        # uvicorn calls this after each read and, for a pipelined next request, after each response: the
        # header's size is checked before h11 parses it.
        if self._header_too_large():
            limit = self.guard.limits.max_header_bytes
            self.guard.count("header_too_large")
            self._answer_and_close(
                raw_response(
                    431,
                    "Request Header Fields Too Large",
                    "header_too_large",
                    f"the request line and headers exceed the server's limit of {limit} bytes",
                )
            )
            return
        super().handle_events()

    def send_400_response(self, msg: str) -> None:
        """What uvicorn answers to a request h11 cannot parse (``msg`` is its generic text), in the JSON shape."""
        if self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete:
            self.transport.close()  # a response is half sent: no second one can follow on this connection
            return
        self.guard.count("bad_request")
        self._answer_and_close(
            raw_response(
                400,
                "Bad Request",
                "bad_request",
                "the request is not valid HTTP/1.1 (malformed request line, header or chunked body)",
            )
        )

    def eof_received(self) -> bool | None:
        if self._refused:
            self.transport.close()
        return None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._refresh()

    def shutdown(self) -> None:
        self._cancel_header_timer()
        super().shutdown()

    # ------------------------------------------------------------------ idle tracking and timers
    def _waiting_for_header(self) -> bool:
        between_requests = self.cycle is None or self.cycle.response_complete
        return between_requests and self.conn.their_state is h11.IDLE

    def _refresh(self) -> None:
        """Re-derive after every event whether this connection is idle and which timer must run."""
        if self.transport is None or self.transport.is_closing() or self._discarding:
            return
        guard = self.guard
        if self._waiting_for_header():
            if self not in guard.idle and not self._overflow:
                guard.idle[self] = time.monotonic()
            # uvicorn's keep-alive timer covers the silence after a response; once bytes arrive (or on a
            # fresh connection) the header must be complete within the header timeout.
            if self.timeout_keep_alive_task is None and self._header_timer is None:
                timeout = guard.limits.header_timeout_s
                if self._overflow:
                    timeout = min(timeout, PROBE_HEADER_TIMEOUT_S)
                self._header_timer = self.loop.call_later(timeout, self._on_header_timeout)
            return
        guard.idle.pop(self, None)
        if self.cycle is not None and self.cycle.response_complete and self.conn.their_state is h11.SEND_BODY:
            # Answered before the body was read (e.g. 401, 413): the rest of the body is drained, within a bound.
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(guard.limits.header_timeout_s, self._on_header_timeout)
            return
        self._cancel_header_timer()

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        partial, _closed = self.conn.trailing_data
        if self._waiting_for_header() and partial:
            self.guard.count("header_timeout")
            self.transport.write(
                raw_response(
                    408,
                    "Request Timeout",
                    "request_timeout",
                    f"the request header was not complete within {self.guard.limits.header_timeout_s:g} s",
                )
            )
        else:
            self.guard.count("idle_timeout")
        self._close()

    def _header_too_large(self) -> bool:
        """Whether the header h11 is waiting for already runs past the limit (complete or not)."""
        if self.conn.their_state is not h11.IDLE:
            return False  # a request (or its body) is being read: its header was checked
        buffered, _closed = self.conn.trailing_data
        limit = self.guard.limits.max_header_bytes
        if len(buffered) <= limit:
            return False
        return _HEADER_END.search(buffered, 0, limit) is None  # no blank line within the first `limit` bytes

    def _answer_and_close(self, response: bytes) -> None:
        """Send a complete answer, then read and drop for a moment before closing: closing a socket with unread
        bytes resets it, and the client would lose the answer."""
        self._discarding = True
        self._cancel_header_timer()
        self.guard.idle.pop(self, None)
        self.transport.write(response)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._linger_timer = self.loop.call_later(LINGER_S, self._close)

    def _close(self) -> None:
        self.guard.idle.pop(self, None)
        if self.conn.our_state not in (h11.ERROR, h11.CLOSED):
            with contextlib.suppress(h11.LocalProtocolError):
                self.conn.send(h11.ConnectionClosed())
        self.transport.close()

    # ------------------------------------------------------------------ the limit
    def _evict_oldest_idle(self) -> bool:
        guard = self.guard
        while guard.idle:
            victim, since = next(iter(guard.idle.items()))
            if time.monotonic() - since < EVICT_GRACE_S:
                return False  # the oldest idle one is young: a client that connected a moment ago is still sending
            del guard.idle[victim]
            if victim.transport is None or victim.transport.is_closing():
                continue
            guard.count("evicted_idle")
            # The victim stops counting now; its connection_lost follows on a later loop iteration.
            victim._counted = False
            guard.set_open(-1)
            victim._cancel_header_timer()
            victim._close()
            return True
        return False

    def _refuse(self, transport: asyncio.Transport) -> None:
        guard = self.guard
        self.transport = transport
        self._refused = True
        guard.lingering += 1
        guard.count("refused")
        transport.write(
            raw_response(
                503,
                "Service Unavailable",
                "too_many_connections",
                f"the server has {guard.limits.max_connections} connections with requests in progress "
                "(STYA2K_MAX_CONNECTIONS); retry shortly",
                retry_after_s=1,
            )
        )
        if guard.lingering > MAX_LINGERING:
            transport.close()
            return
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_S, transport.close)


def guarded_protocol(limits: ConnectionLimits, metrics: ServiceMetrics | None) -> type[GuardedH11Protocol]:
    """A protocol class bound to one server's guard (uvicorn instantiates the class per connection)."""
    return type("ServerGuardedH11Protocol", (GuardedH11Protocol,), {"guard": ConnectionGuard(limits, metrics)})


# ---------------------------------------------------------------------------------------------- fds
@dataclass(frozen=True)
class Fitted:
    max_connections: int
    backlog: int  # asyncio's accept burst (uvicorn's backlog); the kernel queue is LISTEN_QUEUE


def relisten(sock: Any, queue: int = LISTEN_QUEUE) -> None:
    """Lengthen a listening socket's kernel queue without changing asyncio's accept burst.

    ``sock`` is the socket or asyncio's TransportSocket wrapper of it; listen() on a duplicate of the descriptor
    changes the one socket both refer to.
    """
    duplicate = socket.socket(fileno=os.dup(sock.fileno()))
    try:
        duplicate.listen(queue)
    finally:
        duplicate.close()


def fit_connection_limit(wanted: int) -> Fitted:
    """Raise the soft open-files limit towards the hard one if needed; return the connection limit and listen
    backlog that fit.

    A connection limit above what the descriptors allow would let accept() fail (EMFILE) instead of our
    clean refusal, so the limit is lowered (with a warning) when the process may not open enough files.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + _reserve(wanted, MAX_BACKLOG)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            log.warning("could not raise the open-files limit from %d", soft)
    if soft == resource.RLIM_INFINITY:
        return Fitted(wanted, MAX_BACKLOG)
    backlog = min(MAX_BACKLOG, max(MIN_BACKLOG, soft // 8))
    fitting = max(1, min(wanted, soft - _reserve(soft, backlog)))
    if fitting < wanted:
        log.warning(
            "open-files limit %d allows only %d connections (STYA2K_MAX_CONNECTIONS=%d); using %d",
            soft,
            fitting,
            wanted,
            fitting,
        )
    return Fitted(fitting, backlog)


def _reserve(files: int, backlog: int) -> int:
    """Descriptors kept free for what is not a counted connection, for an open-files limit of ``files``.

    Two accept bursts, not one: asyncio accepts up to ``backlog`` connections in one loop iteration and only
    then runs their protocols, which refuse or evict; the descriptors those close are released one iteration
    later still, after the next burst may have been accepted. So at the worst moment one burst waits to be
    closed while the next is being accepted (seen as one EMFILE at a 256-file limit on a loaded machine).
    """
    headroom = max(FD_RESERVE_MIN, files // 10, _open_descriptors() + FD_RESERVE_MIN // 2)
    return headroom + 2 * backlog + MAX_LINGERING + PROBE_SLOTS


def _open_descriptors() -> int:
    """How many descriptors this process holds now (log files, the event loop's epoll, pipes); 0 if unknown."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            return len(os.listdir(folder))
    return 0


# ---------------------------------------------------------------------------------------------- logging
class RateLimitedResourceLog(logging.Filter):
    """Let one "out of system resource" record through per interval, with the count of those held back.

    asyncio logs every failed accept() with a traceback; when file descriptors run out that is thousands of
    lines a second, which fills disks and hides everything else.
    """

    MARKERS = ("out of system resource", "Too many open files")

    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last = float("-inf")
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        exc = record.exc_info[1] if record.exc_info else None
        if not any(m in text or (exc is not None and m in str(exc)) for m in self.MARKERS):
            return True
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self._held += 1
            return False
        detail = f" ({exc})" if exc is not None else ""
        record.msg = (
            f"{text}{detail}: file descriptors or memory ran out; {self._held} more such errors in the last "
            f"{self.interval_s:g} s were not logged (lower STYA2K_MAX_CONNECTIONS or raise the open-files limit)"
        )
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        self._last = now
        self._held = 0
        return True


def install_resource_log_filter(interval_s: float = 10.0) -> RateLimitedResourceLog:
    """Attach one filter to the loggers that report accept() failures (asyncio's, uvicorn's)."""
    flt = RateLimitedResourceLog(interval_s)
    for name in ("asyncio", "uvicorn.error"):
        logger = logging.getLogger(name)
        for existing in [f for f in logger.filters if isinstance(f, RateLimitedResourceLog)]:
            logger.removeFilter(existing)
        logger.addFilter(flt)
    return flt
