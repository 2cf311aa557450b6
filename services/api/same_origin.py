"""Where a request comes from: the Host check (against DNS rebinding) and the cross-site check (against CSRF).

- Host: a web page on evil.example can rebind its name to 127.0.0.1 and then read an open API on loopback; its
  requests still say `Host: evil.example`. Without CXR_API_TOKEN (or whenever CXR_API_ALLOWED_HOSTS is set) only
  loopback names (localhost, 127.0.0.0/8, [::1]), the address the connection reached and the allowed hosts are
  answered; any other Host is a 421, a missing one a 400. With a token and no allowed hosts any Host is answered:
  a rebound page cannot send the token.
- Cross-site: a page on any site can make the browser POST a multipart form to http://127.0.0.1:8000. A request
  whose method can change state (anything but GET, HEAD and OPTIONS) is refused (403) when the browser says it is
  not same-origin: by `Sec-Fetch-Site` where the browser sends it (only `same-origin` and `none`, a typed URL or a
  bookmark, pass), else by `Origin`, whose host must be the request's Host or an allowed host. A request with
  neither header comes from no browser (curl, scripts) and passes. This is the rule of Go's
  net/http.CrossOriginProtection; no token or cookie is involved, so the viewer needs nothing special.

Nothing here imports FastAPI, so `cxr serve` can use `is_loopback_host` without loading the app.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("cxr.api")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_SAME_ORIGIN_FETCH = frozenset({"same-origin", "none"})


def is_loopback_host(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (bracketed or not): names that only ever mean this machine."""
    name = host.strip().lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str | None:
    """The host name of a Host header value without its port (`[::1]:8000` -> `::1`); None when malformed."""
    value = header.strip().lower()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return name
    name, _, port = value.partition(":")
    if not name or (port and not port.isdigit()) or ":" in port:
        return None
    return name.rstrip(".")


def parse_allowed_hosts(value: str) -> frozenset[str]:
    """CXR_API_ALLOWED_HOSTS ("a.example, 10.0.0.5, *") as a set of lower-case names."""
    return frozenset(h.strip().lower().strip("[]").rstrip(".") for h in value.split(",") if h.strip())


class SameOriginGuard:
    """ASGI middleware: 400/421 for a Host this API does not answer to, 403 for a cross-site state-changing
    request (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, check_host: bool, allowed_hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = frozenset(allowed_hosts)
        self.check_host = check_host and "*" not in self.allowed

    def host_allowed(self, name: str, scope: Scope) -> bool:
        """Loopback names, the address this connection reached (what `--host` binds), or an allowed host."""
        server = scope.get("server")
        local = str(server[0]).lower() if server else None
        return is_loopback_host(name) or name in self.allowed or name == local

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # the API has no websockets
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        host = headers.get(b"host")
        name = host_name(host) if host is not None else None
        if self.check_host:
            if name is None:
                await _refuse(send, 400, "the Host header is missing or malformed")
                return
            if not self.host_allowed(name, scope):
                log.warning("refused a request for Host %r (not an allowed host)", host)
                await _refuse(
                    send,
                    421,
                    f"this server does not answer to the host name {name!r}",
                    "Use http://127.0.0.1:PORT/ or http://localhost:PORT/, or list the name in CXR_API_ALLOWED_HOSTS.",
                )
                return
        if scope["method"] not in SAFE_METHODS:
            why = self.cross_site(headers, host)
            if why is not None:
                log.warning("refused a cross-site %s %s: %s", scope["method"], scope.get("path"), why)
                await _refuse(
                    send,
                    403,
                    f"cross-site request refused: {why}",
                    "Call the API from the viewer, or from a program (curl, a script), not from another web page.",
                )
                return
        await self.app(scope, receive, send)

    def cross_site(self, headers: dict[bytes, str], host: str | None) -> str | None:
        """Why the browser's own headers say this request comes from another site; None when they do not."""
        fetch_site = headers.get(b"sec-fetch-site")
        if fetch_site is not None:
            value = fetch_site.strip().lower()
            return None if value in _SAME_ORIGIN_FETCH else f"Sec-Fetch-Site is {value!r}"
        origin = headers.get(b"origin")
        if origin is None:
            return None
        parts = urlsplit(origin.strip())
        netloc = parts.netloc.lower()
        if parts.scheme not in ("http", "https") or not netloc:
            return f"Origin is {origin.strip()!r}"
        if host is not None and netloc == host.strip().lower():
            return None
        if (parts.hostname or "").rstrip(".") in self.allowed:
            return None
        return f"Origin {origin.strip()!r} is not this server"


async def _refuse(send: Send, status: int, detail: str, hint: str | None = None) -> None:
    data = json.dumps({"detail": detail, "hint": hint}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
