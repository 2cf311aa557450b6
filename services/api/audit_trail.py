"""Every `/v1` request leaves an audit record (services.governance.audit), written before its answer is sent.

`AuditMiddleware` wraps the app: when the response starts it records the actor (`request.state.actor`, set by the
token check; "anonymous" before or without one), the action (the route's endpoint name, `api.<name>`), the outcome
(the status code), the client address and the objects. A route names its objects with `note(request, ...)`: the
query's content hash, the result point ids, counts; without a note the route's path parameters (a point id) are
the objects. If the record cannot be written the answer is not sent either: a 503 takes its place, so no result
ever leaves the server unrecorded. Requests outside `/v1` (health, the viewer's files, the docs) are not recorded.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.governance.audit import AuditLog

log = logging.getLogger("cxr.audit")
PREFIX = "/v1/"


def note(request: Request, **objects: Any) -> None:
    """Add `objects` (content hashes, point ids, counts; never names, ids or paths) to this request's record."""
    current = getattr(request.state, "audit", None) or {}
    request.state.audit = {**current, **objects}


class AuditMiddleware:
    def __init__(self, app: ASGIApp, audit: AuditLog) -> None:
        self.app, self.audit = app, audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.audit.enabled or not scope.get("path", "").startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        refused = False

        async def recorded(message: Message) -> None:
            nonlocal refused
            if refused:
                return  # the original answer is dropped: a 503 went instead
            if message["type"] == "http.response.start":
                try:
                    await anyio.to_thread.run_sync(self._record, scope, int(message["status"]))
                except Exception:  # noqa: BLE001 - no answer without its record
                    log.exception("audit record not written; answering 503 instead")
                    refused = True
                    await _unavailable(send)
                    return
            await send(message)

        await self.app(scope, receive, recorded)

    def _record(self, scope: Scope, status: int) -> None:
        state = scope.get("state") or {}
        endpoint = scope.get("endpoint")
        action = "api." + (getattr(endpoint, "__name__", None) or "unrouted")
        objects = state.get("audit") or dict(scope.get("path_params") or {})
        client = scope.get("client")
        self.audit.record(
            str(state.get("actor") or "anonymous"),
            action,
            "ok" if status < 400 else str(status),
            client=client[0] if client else None,
            objects={k: str(v) if not isinstance(v, int | list | dict) else v for k, v in objects.items()},
        )


async def _unavailable(send: Send) -> None:
    body = json.dumps({"detail": "the audit trail cannot be written; nothing is answered until it can"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 503, "headers": headers + [(b"retry-after", b"5")]})
    await send({"type": "http.response.body", "body": body})
