"""What guards every request: the body-size limit counted on the stream, and the error map.

- The bearer tokens and their scopes are services.api.access: a 401 carries `WWW-Authenticate: Bearer`, a token
  without a route's scope gets a 403. Without any token the API is open, which is why `cxr serve` then binds
  loopback only.
- The body limit (`CXR_API_MAX_UPLOAD_MB`) is checked on the declared Content-Length and again on every chunk
  received, so a chunked upload without a length, or one that lies about it, is cut off at the limit (413).
  A body whose next part takes longer than `CXR_API_BODY_TIMEOUT_S` to come is cut off too (408, and the
  connection is closed), so a client cannot hold a request open by trickling its body.
- Domain errors become JSON `{"detail": ..., "hint": ...}` with a status that says whose fault it is; none
  becomes a 500.
"""

from __future__ import annotations

import asyncio
import json
import logging

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.errors import (
    CollectionNotFoundError,
    ConfigError,
    CxrError,
    DecodeBusyError,
    DecodeError,
    ImageTooLargeError,
    ModelError,
    PointNotFoundError,
    StoredImageError,
    StoreError,
    StoreLockedError,
)
from services.pipeline.filters import FilterSyntaxError, UnknownValueError

log = logging.getLogger("cxr.api")


class BodyTooLarge(HTTPException):
    """Raised from inside `receive` when the body passes the limit. An HTTPException, so FastAPI's form parser
    lets it through as the 413 it is (it turns other exceptions into a 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the limit of {limit // 2**20} MiB")


class BodyTimedOut(HTTPException):
    """Raised from inside `receive` when the next part of the body does not come in time (408, then close)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            408, f"the request body stalled: nothing came for {seconds:g} s", headers={"Connection": "close"}
        )


class BodyLimitMiddleware:
    """Refuse bodies over `max_bytes`: by Content-Length before reading, and by counting the stream; and bodies
    whose next part takes longer than `read_timeout_s` to arrive."""

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout_s: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s

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
        body_done = False

        async def limited() -> Message:
            nonlocal received, body_done
            if body_done or self.read_timeout_s is None:  # after the body, receive() waits for a disconnect
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), self.read_timeout_s)
                except TimeoutError:
                    raise BodyTimedOut(self.read_timeout_s) from None
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
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
        except (BodyTooLarge, BodyTimedOut) as exc:  # raised where no route caught it (e.g. while a handler read)
            if not started:
                close = [(b"connection", b"close")] if isinstance(exc, BodyTimedOut) else []
                await _send_json(send, exc.status_code, {"detail": exc.detail}, close)


async def _send_json(send: Send, status: int, body: dict, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def status_for(exc: CxrError) -> int:
    """The HTTP status of a domain error: the client's input (4xx) or the service's state (503)."""
    if isinstance(exc, DecodeBusyError) or getattr(exc, "code", None) == "out_of_memory":
        return 503
    if isinstance(exc, ImageTooLargeError) or (isinstance(exc, DecodeError) and exc.code == "too_large"):
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
    """Map CxrError to JSON with a status and a hint; a 503 also says when to retry (Retry-After).

    A decode refusal adds `reason`, its stable code (services.imaging.reasons.DecodeReason, or "busy"); the
    decoder's own exception text goes to the log only.
    """

    async def domain_error(request: Request, exc: CxrError) -> JSONResponse:
        status = status_for(exc)
        body: dict[str, object] = {"detail": exc.message, "hint": exc.hint or None}
        if isinstance(exc, DecodeError):  # the decoder names the upload "upload"; say what was wrong with it
            body["detail"] = f"the uploaded file cannot be used: {exc.reason}"
            body["reason"] = exc.code
            log.info("%s %s -> %d %s: %s", request.method, request.url.path, status, exc.code, exc.detail or exc.reason)
        elif isinstance(exc, DecodeBusyError | UnknownValueError):  # unknown_value: a filter value nobody has
            body["reason"] = exc.code
        retry_after = exc.retry_after_s if isinstance(exc, DecodeBusyError) else 5
        headers = {"Retry-After": str(retry_after)} if status == 503 else None
        if status >= 500:
            log.warning("%s %s -> %d: %s", request.method, request.url.path, status, exc.message)
        return JSONResponse(body, status_code=status, headers=headers)

    app.add_exception_handler(CxrError, domain_error)  # type: ignore[arg-type]
