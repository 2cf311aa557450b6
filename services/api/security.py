"""What guards every request: the bearer token, the body-size limit counted on the stream, and the error map.

- The token (`CXR_API_TOKEN`) is compared in constant time (hmac.compare_digest); a 401 carries
  `WWW-Authenticate: Bearer`. Without a token the API is open, which is why `cxr serve` then binds loopback only.
- The body limit (`CXR_API_MAX_UPLOAD_MB`) is checked on the declared Content-Length and again on every chunk
  received, so a chunked upload without a length, or one that lies about it, is cut off at the limit (413).
- Domain errors become JSON `{"detail": ..., "hint": ...}` with a status that says whose fault it is; none
  becomes a 500.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.config import Settings
from services.errors import (
    CollectionNotFoundError,
    ConfigError,
    CxrError,
    DecodeError,
    ImageTooLargeError,
    ModelError,
    PointNotFoundError,
    StoredImageError,
    StoreError,
    StoreLockedError,
)
from services.pipeline.filters import FilterSyntaxError

log = logging.getLogger("cxr.api")

_bearer = HTTPBearer(auto_error=False, description="The CXR_API_TOKEN, when the server sets one.")


def bearer_check(settings: Settings) -> Callable[..., None]:
    """A dependency that admits a request carrying `Authorization: Bearer <CXR_API_TOKEN>` (any request when no
    token is configured)."""
    token = settings.api_token.get_secret_value().encode() if settings.api_token else None

    def check(credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:  # noqa: B008
        if token is None:
            return
        if credentials is None:
            raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": 'Bearer realm="cxr"'})
        if not hmac.compare_digest(credentials.credentials.encode(), token):
            raise HTTPException(
                401,
                "the bearer token is not valid",
                headers={"WWW-Authenticate": 'Bearer realm="cxr", error="invalid_token"'},
            )

    return check


class BodyTooLarge(HTTPException):
    """Raised from inside `receive` when the body passes the limit. An HTTPException, so FastAPI's form parser
    lets it through as the 413 it is (it turns other exceptions into a 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the limit of {limit // 2**20} MiB")


class BodyLimitMiddleware:
    """Refuse bodies over `max_bytes`: by Content-Length before reading, and by counting the stream."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                await _send_json(send, 400, {"detail": "the Content-Length header is not a number"})
                return
            if too_big:
                await _send_json(send, 413, {"detail": BodyTooLarge(self.max_bytes).detail})
                return
        received = 0
        started = False

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracking)
        except BodyTooLarge as exc:  # raised where no route caught it (e.g. while a handler read the body)
            if not started:
                await _send_json(send, 413, {"detail": exc.detail})


async def _send_json(send: Send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def status_for(exc: CxrError) -> int:
    """The HTTP status of a domain error: the client's input (4xx) or the service's state (503)."""
    if isinstance(exc, ImageTooLargeError):
        return 413
    if isinstance(exc, DecodeError | FilterSyntaxError):
        return 422
    if isinstance(exc, PointNotFoundError | CollectionNotFoundError):
        return 404
    if isinstance(exc, StoredImageError):
        return 409
    if isinstance(exc, StoreLockedError | ModelError | StoreError | ConfigError):
        return 503
    return 422


def install_error_handlers(app: FastAPI) -> None:
    """Map CxrError to JSON with a status and a hint; a StoreLockedError also says when to retry."""

    async def domain_error(request: Request, exc: CxrError) -> JSONResponse:
        status = status_for(exc)
        reason = exc.reason if isinstance(exc, DecodeError) else exc.message
        if isinstance(exc, DecodeError):  # the decoder names the upload "upload"; say what was wrong with it
            reason = f"the uploaded file cannot be used: {reason}"
        headers = {"Retry-After": "5"} if status == 503 else None
        if status >= 500:
            log.warning("%s %s -> %d: %s", request.method, request.url.path, status, exc.message)
        return JSONResponse({"detail": reason, "hint": exc.hint or None}, status_code=status, headers=headers)

    app.add_exception_handler(CxrError, domain_error)  # type: ignore[arg-type]
