"""Run the service under uvicorn programmatically, with a graceful SIGTERM drain.

First SIGTERM / SIGINT: /health/ready turns 503 (load balancers stop sending), requests keep being
served for ``drain_grace_s``; then uvicorn stops accepting, waits up to ``drain_timeout_s`` for in-flight
requests, the lifespan drains the batcher and the process exits 0. A second signal skips the grace
period; a third forces the exit.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from types import FrameType

import uvicorn

from service.api.state import ServiceState
from service.app import create_app
from service.connections import (
    MAX_HEADER_BYTES,
    ConnectionLimits,
    fit_connection_limit,
    guarded_protocol,
    install_resource_log_filter,
    relisten,
)
from service.logs import configure_logging
from service.settings import Settings, SettingsError

log = logging.getLogger("service.server")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServiceState) -> None:
        super().__init__(config)
        self.service_state = state
        self.drain_until: float | None = None
        self.exit_code = 0
        self._signals = 0

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Deliberately not uvicorn's handler: it re-raises the signal after shutdown, which would turn a
        # clean drain into death-by-SIGTERM (exit status 143 instead of 0).
        self._signals += 1
        if self._signals == 1:
            grace = self.service_state.settings.drain_grace_s
            log.info("signal %s: draining for %.1fs before closing", signal.Signals(sig).name, grace)
            self.service_state.begin_drain()
            self.drain_until = time.monotonic() + grace
        elif self._signals == 2:
            log.info("second signal: closing now")
            self.should_exit = True
        else:
            log.warning("third signal: forcing exit")
            self.force_exit = True
            self.should_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        for server in getattr(self, "servers", []):  # asyncio listened with the accept burst: lengthen the queue
            for sock in server.sockets:
                relisten(sock)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_until is not None and time.monotonic() >= self.drain_until:
            self.should_exit = True
        return await super().on_tick(counter)

    def fatal(self, reason: str) -> None:
        log.error("fatal: %s; exiting", reason)
        self.exit_code = 1
        self.should_exit = True


def build_server(settings: Settings) -> DrainingServer:
    app = create_app(settings)
    state: ServiceState = app.state.service
    fitted = fit_connection_limit(settings.max_connections)
    limits = ConnectionLimits(max_connections=fitted.max_connections, header_timeout_s=settings.header_timeout_s)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(limits, state.metrics),  # header timeout + connection limit (connections.py)
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]  # a float works: call_later
        # h11's own bound on an incomplete header (and chunk header); a complete one is checked by the protocol.
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        backlog=fitted.backlog,  # also asyncio's accept burst, which the open-files reserve must cover
        log_config=None,  # our JSON logging, configured by serve()
        access_log=False,  # the gateway middleware logs each request with its id
        lifespan="on",
        timeout_graceful_shutdown=max(1, round(settings.drain_timeout_s)),
        server_header=False,
    )
    server = DrainingServer(config, state)
    state.on_fatal = server.fatal
    return server


def serve(settings: Settings) -> int:
    """Serve until drained; returns the process exit code (0 after a clean SIGTERM drain)."""
    configure_logging(settings.log_level)
    install_resource_log_filter()
    server = build_server(settings)
    log.info("starting", extra={"host": settings.host, "port": settings.port})
    server.run()
    thread = server.service_state.model_thread
    if thread is not None:
        thread.stop()
        if not thread.join(settings.drain_timeout_s):
            # A forward pass still running inside torch would abort the interpreter's shutdown
            # ("terminate called without an active exception"): leave without finalisation instead.
            log.error("model thread still busy after the drain timeout; exiting hard")
            logging.shutdown()
            os._exit(server.exit_code or 1)
    log.info("stopped", extra={"exit_code": server.exit_code})
    return server.exit_code


def main() -> None:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        sys.stderr.write(f"configuration error: {exc}\n")
        sys.exit(2)
    sys.exit(serve(settings))
