"""The test services themselves: a real Redis that answers, survives a restart with its data, and stops."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.services import RedisServer, port_open


def _cmd(port: int, *args: str) -> bytes:
    parts = [f"${len(a)}\r\n{a}\r\n" for a in args]
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(f"*{len(args)}\r\n".encode() + "".join(parts).encode())
        return s.recv(256)


def test_redis_restart_keeps_data(tmp_path: Path) -> None:
    server = RedisServer(tmp_path).start()
    try:
        assert _cmd(server.port, "RPUSH", "q", "job-1") == b":1\r\n"
        server.stop()
        assert not port_open(server.port)
        server.start()
        assert _cmd(server.port, "LRANGE", "q", "0", "-1") == b"*1\r\n$5\r\njob-1\r\n"
    finally:
        server.stop()
