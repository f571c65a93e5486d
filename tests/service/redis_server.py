"""A real redis-server for the shared job store's tests (Debian's package, .ci/install-redis.sh): on 127.0.0.1, a
free port and a temporary directory, with an append-only file so a restart keeps the jobs (as a production Redis
with persistence would). Imported by name (conftest puts this folder on sys.path)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from service_helpers import free_port

REDIS_SERVER = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists()
                                                 else None)  # fmt: skip
MISSING = "redis-server is not installed (bash .ci/install-redis.sh installs Debian's package)"


class RedisServer:
    def __init__(self, directory: Path) -> None:
        assert REDIS_SERVER is not None, MISSING
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        command = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                   "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no",
                   "--logfile", str(self.directory / "redis.log")]  # fmt: skip
        self.process = subprocess.Popen(command)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.ping():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port}; see {self.directory / 'redis.log'}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM: Redis flushes its append-only file and exits."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)
            self.process = None
