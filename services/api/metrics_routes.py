"""`GET /metrics` (Prometheus) for `cxr serve`, and the middleware that counts and times every request.

Labels are route templates (`/v1/points/{point_id}`), methods and statuses: never an id, a path or a file name, so
nothing of a patient is exposed. A client on loopback (a sidecar, a local Prometheus) reads it without a token;
any other needs an admin-scope token, like the audit trail. Not itself audited (it is scraped every few seconds).
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.access import ADMIN, _bearer, require_scope
from services.api.same_origin import is_loopback_host
from services.api.state import ApiState, get_state
from services.governance.metrics import API_LATENCY, API_REQUESTS, MODEL_LOAD

router = APIRouter(tags=["health"])


@router.get("/metrics", include_in_schema=False)
async def metrics(
    request: Request,
    state: Annotated[ApiState, Depends(get_state)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
) -> Response:
    """Prometheus exposition: loopback clients as they are, others with an admin token."""
    if request.client is None or not is_loopback_host(request.client.host):
        await require_scope(ADMIN)(request, credentials)
    if state.readiness.seconds is not None:
        MODEL_LOAD.set(state.readiness.seconds)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Counts each HTTP answer by route template, method and status, and times it to its first byte."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                API_REQUESTS.labels(route, scope.get("method", "?"), str(message["status"])).inc()
                API_LATENCY.labels(route).observe(time.perf_counter() - start)
            await send(message)

        await self.app(scope, receive, timed)
