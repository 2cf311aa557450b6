"""Real services for the tests, each on a free loopback port in its own temp dir, waited for, then stopped.

Used through fixtures in tests/conftest.py. Under `make test` (deploy/test-services.sh sets CXR_TEST_SERVICES=1)
a missing binary fails the test; elsewhere it skips with the reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], bool], *, timeout: float = 30.0, what: str = "service") -> None:
    """Poll `check` until it returns True; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not ready yet
            pass
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    raise TimeoutError(f"{what} was not ready within {timeout:.0f} s")


def require(binary: str, package: str) -> str:
    """The binary's path; skip (or fail under make test) when it is not installed."""
    path = shutil.which(binary)
    if path:
        return path
    message = f"{binary} is not installed (Debian package {package}); `make test` installs it"
    if os.environ.get("CXR_TEST_SERVICES"):
        pytest.fail(message)
    pytest.skip(message)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


class RedisServer:
    """A redis-server on loopback that a test may stop and start again on the same port (an outage)."""

    def __init__(self, workdir: Path, *, port: int | None = None, persist: bool = True) -> None:
        self.binary = require("redis-server", "redis-server")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.persist = persist
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def start(self) -> RedisServer:
        # appendonly + fsync always: a restart keeps every queued message, as a production broker should
        persist = ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(self.workdir)]
            + persist,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.ping, timeout=20, what=f"redis on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
