"""uvicorn as `cxr serve` runs it: timeouts and caps so that slow or idle clients cannot hold the server.

What uvicorn 0.55 (h11) offers and what it lacks, measured on loopback:
- `timeout_keep_alive` closes a connection idle *after a response*; it is disarmed by the first byte of the next
  request, and never armed before the first request, so a connection that sends half a request head (or nothing)
  was held for as long as the client liked (20 such sockets: all still open after 6 s, and after 30 s).
- `limit_concurrency` answers 503 to a request once that many connections (or tasks) are open; it accepts the
  connections themselves, so half-open ones count against it until something closes them.
- `h11_max_incomplete_event_size` caps the bytes buffered for an unfinished request head (400 beyond).
- There is no header-read or body-read timeout.

So the protocol below adds a request-head deadline: from the moment a connection is open, or has finished a
response, the client has CXR_API_HEADER_TIMEOUT_S to deliver a complete request head; trickling bytes does not
extend it. The body timeout (CXR_API_BODY_TIMEOUT_S, between two parts of a body) is kept by the app
(services.api.security.BodyLimitMiddleware), so it holds under any server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from services.config import Settings

log = logging.getLogger("cxr.api")


class HeadDeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request head (see the module docstring)."""

    head_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is None and not self.transport.is_closing():
            self._head_deadline = self.loop.call_later(self.head_timeout_s, self._head_deadline_passed)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_deadline_passed(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing():
            return
        log.info("closed a connection from %s: no complete request within %.0f s", self.client, self.head_timeout_s)
        with contextlib.suppress(h11.LocalProtocolError):
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not before:  # a whole request head arrived: the app (and the body timeout) take over
            self._disarm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request at once
        if self.cycle is None or self.cycle.response_complete:
            self._arm_head_deadline()


def server_config(app: Any, settings: Settings, *, host: str, port: int, log_level: str = "info") -> uvicorn.Config:
    """A uvicorn Config for `app` with the API's slow-client limits from `settings`."""
    protocol = type(
        "HeadDeadlineH11Protocol", (HeadDeadlineH11Protocol,), {"head_timeout_s": settings.api_header_timeout_s}
    )
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        server_header=False,
        http=protocol,
        timeout_keep_alive=settings.api_keep_alive_s,
        limit_concurrency=settings.api_max_connections,
        h11_max_incomplete_event_size=settings.api_max_header_kb * 1024,
    )
