"""Who calls the REST API and what they may do: the bearer token, the name it goes by, and its scopes.

- Tokens: CXR_API_TOKEN (every scope, actor "api-token") and the named tokens of CXR_API_TOKENS_FILE
  (services.api.tokens, reread when the file changes). With neither set the API is open: every caller is
  "anonymous" with every scope, and `cxr serve` binds loopback only.
- Scopes: `search` (search, similar, facets, points, thumbnails, pixels, render, explain), `index` (POST /v1/index),
  `admin` (everything, and payloads with UIDs, the patient hash, the content hash and the source ref). On an open
  API those identifiers are hidden too unless CXR_API_EXPOSE_IDENTIFIERS=true. Each router is included with
  `Depends(require_scope(...))`; 401 (`WWW-Authenticate: Bearer`) without a valid token, 403 naming the scope a
  valid token lacks.
- The dependency leaves the caller on the request (`request.state.actor`, `request.state.scopes`; `actor_of`)
  for the audit trail, and says whether this request may see admin-only payload fields (`sees_admin_fields`,
  read by services.api.schemas.public_payload).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.api.tokens import ADMIN, ANONYMOUS, API_TOKEN_NAME, INDEX, SCOPES, SEARCH, TokenCache
from services.config import Settings

__all__ = ["ADMIN", "INDEX", "SEARCH", "Caller", "TokenGate", "actor_of", "install_access", "require_scope"]

_bearer = HTTPBearer(
    auto_error=False, description="CXR_API_TOKEN, or a named token from `cxr token add`, when the server sets any."
)
# Whether the request being answered may see admin-only payload fields. Set by the scope dependency in the
# request's task; FastAPI and Starlette run sync endpoints and run_in_threadpool work in a copy of that context.
# Outside a checked request it is False: a payload never shows more than it should.
_ADMIN_VIEW: ContextVar[bool] = ContextVar("cxr_admin_view", default=False)


@dataclass(frozen=True)
class Caller:
    """Who is calling: the actor's name for the audit trail and the scopes they hold (admin implies the others)."""

    actor: str
    scopes: frozenset[str]

    @property
    def admin(self) -> bool:
        return ADMIN in self.scopes


class TokenGate:
    """The tokens one app accepts: CXR_API_TOKEN and the named tokens of CXR_API_TOKENS_FILE."""

    def __init__(self, settings: Settings) -> None:
        token = settings.api_token.get_secret_value() if settings.api_token is not None else None
        self._api_token = hashlib.sha256(token.encode()).digest() if token is not None else None
        self._file = TokenCache(settings.api_tokens_file) if settings.api_tokens_file is not None else None
        self.expose_identifiers = settings.api_expose_identifiers

    @property
    def open(self) -> bool:
        """No token of any kind configured: every caller is admitted, as `anonymous` with every scope."""
        return self._api_token is None and self._file is None

    def identify(self, secret: str | None) -> Caller | None:
        """The caller this secret stands for; None when it stands for none (or there is none, on a closed API)."""
        if self.open:
            return Caller(ANONYMOUS, frozenset(SCOPES))
        if not secret:
            return None
        # hashed first, so the comparison takes the same time whatever the lengths
        presented = hashlib.sha256(secret.encode()).digest()
        if self._api_token is not None and hmac.compare_digest(presented, self._api_token):
            return Caller(API_TOKEN_NAME, frozenset(SCOPES))
        named = self._file.lookup(secret) if self._file is not None else None
        return Caller(named.name, named.granted) if named is not None else None


class MissingScope(HTTPException):
    """A valid token without the scope a route needs (403, RFC 6750's insufficient_scope)."""

    def __init__(self, scope: str, actor: str) -> None:
        super().__init__(
            403,
            f"the token {actor!r} does not have the {scope!r} scope",
            headers={"WWW-Authenticate": f'Bearer realm="cxr", error="insufficient_scope", scope="{scope}"'},
        )
        self.scope = scope


def install_access(app: FastAPI, settings: Settings) -> TokenGate:
    """Give `app` the token gate of `settings` (read by `require_scope`) and the JSON answer of a 403."""
    gate = TokenGate(settings)
    app.state.token_gate = gate

    async def missing_scope(_request: Request, exc: MissingScope) -> JSONResponse:
        body = {"detail": exc.detail, "scope": exc.scope, "hint": f"Use a token with the {exc.scope!r} scope."}
        return JSONResponse(body, status_code=403, headers=exc.headers)

    app.add_exception_handler(MissingScope, missing_scope)  # type: ignore[arg-type]
    return gate


def require_scope(scope: str) -> Callable[..., Awaitable[Caller]]:
    """A dependency admitting callers whose token holds `scope` (`Depends(require_scope(ADMIN))`); it returns
    the Caller. Async on purpose: it runs in the request's own context, so what it sets there holds for the
    endpoint."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}: the scopes are {', '.join(SCOPES)}")

    async def check(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
    ) -> Caller:
        caller = getattr(request.state, "caller", None)
        if caller is None:  # once per request, however many scopes its route asks for
            gate: TokenGate = request.app.state.token_gate
            caller = gate.identify(credentials.credentials if credentials is not None else None)
            if caller is None:
                raise _unauthorized(credentials is not None)
            request.state.caller = caller
            request.state.actor = caller.actor
            request.state.scopes = caller.scopes
            # an open API's anonymous caller holds every scope, yet sees identifiers only when the setting says so
            _ADMIN_VIEW.set(caller.admin and (gate.expose_identifiers or not gate.open))
        if scope not in caller.scopes:
            raise MissingScope(scope, caller.actor)
        return caller

    check.__name__ = f"require_{scope}_scope"
    return check


def _unauthorized(presented: bool) -> HTTPException:
    if not presented:
        return HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": 'Bearer realm="cxr"'})
    return HTTPException(
        401,
        "the bearer token is not valid",
        headers={"WWW-Authenticate": 'Bearer realm="cxr", error="invalid_token"'},
    )


def actor_of(request: Request) -> str:
    """The name of the caller of a checked request: the token's name, "api-token" (CXR_API_TOKEN) or "anonymous"
    (an open API); "anonymous" too on a route no scope guards (health, static files)."""
    return getattr(request.state, "actor", ANONYMOUS)


def sees_admin_fields() -> bool:
    """True when the request being answered comes from a caller with the `admin` scope (on an open API: only
    with CXR_API_EXPOSE_IDENTIFIERS=true)."""
    return _ADMIN_VIEW.get()
