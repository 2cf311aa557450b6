"""`cxr serve` against slow and hostile clients, run for real (a subprocess on a free loopback port, raw sockets).

Measured: half-open connections (a partial request head, nothing at all, or a head trickled a byte at a time) are
closed at CXR_API_HEADER_TIMEOUT_S while a normal request is answered meanwhile; a stalled body gets a 408 at
CXR_API_BODY_TIMEOUT_S and the connection is closed; an idle keep-alive connection goes at CXR_API_KEEP_ALIVE_S;
beyond CXR_API_MAX_CONNECTIONS a request gets a 503, and room comes back when connections close; a foreign Host is
a 421 and a cross-site POST a 403 over a real socket. All bounded: at most 64 sockets, each wait a few seconds.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.services import free_port, wait_for

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
KEEP_ALIVE = 1
MAX_CONNECTIONS = 64
SLACK = 1.5  # scheduling on a shared 2-core machine


@dataclass(frozen=True)
class Served:
    port: int
    base: str
    log: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`cxr serve` with short limits over an empty data dir and no model: /livez answers, which is all that is
    needed to see the server's own behaviour."""
    tmp = tmp_path_factory.mktemp("serve-limits")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CXR_")},
        "CXR_DATA_DIR": str(tmp / "data"),
        "CXR_MODEL": str(tmp / "no-model"),
        "CXR_PATIENT_SALT": "limits",
        "CXR_TORCH_THREADS": "1",
        "CXR_API_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT),
        "CXR_API_BODY_TIMEOUT_S": str(BODY_TIMEOUT),
        "CXR_API_KEEP_ALIVE_S": str(KEEP_ALIVE),
        "CXR_API_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    }
    log_path = tmp / "serve.log"
    cxr = Path(sys.executable).with_name("cxr")
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(cxr), "serve", "--port", str(port), "--log-level", "warning"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: httpx.get(base + "/livez", timeout=2).status_code == 200, timeout=120, what="cxr serve")
            yield Served(port, base, log_path)
            assert proc.poll() is None, log_path.read_text()  # it survived everything
        finally:
            proc.terminate()
            proc.wait(30)


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setblocking(False)
    return s


def _closed_times(socks: list[socket.socket], started: float, limit: float) -> dict[int, float]:
    """Seconds from `started` until the server closed each socket (EOF or reset), for those closed within
    `limit` seconds; whatever the server wrote before closing is read and dropped."""
    closed: dict[int, float] = {}
    open_ = {s.fileno(): s for s in socks}
    while open_ and time.monotonic() - started < limit:
        readable, _, _ = select.select(list(open_.values()), [], [], 0.05)
        for s in readable:
            try:
                data = s.recv(65536)
            except (ConnectionResetError, BlockingIOError):
                data = b""
            if not data:
                closed[s.fileno()] = time.monotonic() - started
                del open_[s.fileno()]
    return closed


def test_half_open_connections_are_closed_at_the_header_timeout(served: Served) -> None:
    partial = _partial_head(served.port)
    socks = [_connect(served.port) for _ in range(48)]
    silent = _connect(served.port)  # connects and sends nothing at all
    trickler = _connect(served.port)  # sends its head a byte at a time: still has to finish in time
    started = time.monotonic()
    for s in socks:
        s.sendall(partial)

    # meanwhile a normal request is answered at once
    t0 = time.monotonic()
    r = httpx.get(served.base + "/livez", timeout=5)
    assert r.status_code == 200 and time.monotonic() - t0 < 1.0

    everyone = [*socks, silent, trickler]
    closed: dict[int, float] = {}
    sent = 0
    while len(closed) < len(everyone) and time.monotonic() - started < HEADER_TIMEOUT + SLACK:
        if trickler.fileno() not in closed and sent < len(partial):
            trickler.send(partial[sent : sent + 1])  # one byte every 0.2 s: it never finishes in time
            sent += 1
        pending = [s for s in everyone if s.fileno() not in closed]
        closed |= _closed_times(pending, started, min(time.monotonic() - started + 0.2, HEADER_TIMEOUT + SLACK))
    try:
        assert len(closed) == len(everyone), f"{len(everyone) - len(closed)} connections still open"
        assert max(closed.values()) < HEADER_TIMEOUT + SLACK, max(closed.values())
        assert min(closed.values()) > HEADER_TIMEOUT - 0.5, min(closed.values())  # the deadline did it, not an error
        assert httpx.get(served.base + "/livez", timeout=5).status_code == 200
    finally:
        for s in everyone:
            s.close()


def _partial_head(port: int) -> bytes:
    return f"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data\r\nX-A: ".encode()


def test_a_stalled_body_gets_408_and_the_connection_is_closed(served: Served) -> None:
    s = _connect(served.port)
    head = (
        f"POST /v1/render HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    started = time.monotonic()
    s.sendall(head + b'--b\r\nContent-Disposition: form-data; name="file"; filename="q"\r\n\r\n' + b"\xff" * 100)
    reply = b""
    try:
        while time.monotonic() - started < BODY_TIMEOUT + SLACK + 2:
            select.select([s], [], [], 0.05)
            try:
                chunk = s.recv(65536)
            except BlockingIOError:
                continue
            if not chunk:
                break
            reply += chunk
        elapsed = time.monotonic() - started
    finally:
        s.close()
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
    assert b"stalled" in reply
    assert BODY_TIMEOUT - 0.5 < elapsed < BODY_TIMEOUT + SLACK, elapsed  # answered, then closed (EOF) in time


def test_an_idle_keep_alive_connection_is_closed(served: Served) -> None:
    s = _connect(served.port)
    try:
        s.sendall(f"GET /livez HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\n\r\n".encode())
        started = time.monotonic()
        closed = _closed_times([s], started, KEEP_ALIVE + SLACK + 1)
    finally:
        s.close()
    assert closed and closed[next(iter(closed))] < KEEP_ALIVE + SLACK


def test_requests_beyond_the_connection_cap_get_503_until_room_comes_back(served: Served) -> None:
    held = [_connect(served.port) for _ in range(MAX_CONNECTIONS - 1)]
    try:
        # once the server has accepted them all, the next request is one too many
        wait_for(lambda: httpx.get(served.base + "/livez", timeout=2).status_code == 503, timeout=1.5, what="cap")
    finally:
        for s in held:
            s.close()
    wait_for(lambda: httpx.get(served.base + "/livez", timeout=2).status_code == 200, timeout=5, what="room")


def test_foreign_host_and_cross_site_post_over_a_real_socket(served: Served) -> None:
    r = httpx.get(served.base + "/livez", headers={"Host": "evil.example"}, timeout=5)
    assert r.status_code == 421 and "evil.example" in r.json()["detail"]
    for host in (f"localhost:{served.port}", f"127.0.0.1:{served.port}", "127.9.9.9"):
        assert httpx.get(served.base + "/livez", headers={"Host": host}, timeout=5).status_code == 200, host
    files = {"file": ("q.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "image/png")}
    r = httpx.post(served.base + "/v1/index", files=files, headers={"Origin": "http://evil.example"}, timeout=5)
    assert r.status_code == 403 and "cross-site" in r.json()["detail"]
    same = {"Origin": served.base, "Sec-Fetch-Site": "same-origin"}
    r = httpx.post(served.base + "/v1/index", files=files, headers=same, timeout=5)
    assert r.status_code == 503 and "queue" in r.json()["detail"]  # past the guard: no queue is configured
