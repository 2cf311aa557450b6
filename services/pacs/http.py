"""HTTP towards a PACS: one authenticated session, and retries with backoff for what may pass (timeouts, connection
errors, 408/429/5xx). A 4xx answer is permanent for that request and is not retried. Credentials never reach a log
or an error message."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from services.errors import PacsError

log = logging.getLogger("cxr.pacs")
T = TypeVar("T")
RETRIABLE_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})


class PacsHttpError(PacsError):
    """The PACS answered a request with an error status (after retries, when the status was retriable)."""

    def __init__(self, status: int, what: str) -> None:
        super().__init__(f"the PACS answered HTTP {status} to {what}")
        self.status = status

    @property
    def transient(self) -> bool:
        return self.status in RETRIABLE_HTTP


class PacsUnreachableError(PacsError):
    """The PACS did not answer (timeouts or connection errors) after every retry."""


@dataclass(frozen=True)
class PacsAuth:
    """Basic auth (user and password) or a bearer token; both None for an open PACS."""

    user: str | None = None
    password: str | None = None
    token: str | None = None

    def __post_init__(self) -> None:
        if self.token and (self.user or self.password):
            raise PacsError("give either --user/--password or --token, not both", "Pick one way to authenticate.")
        if bool(self.user) != bool(self.password):
            raise PacsError("--user and --password go together", "Give both (or CXR_PACS_PASSWORD), or --token.")


def redact(url: str) -> str:
    """The URL without user info or query (safe for logs and cursor names)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def make_session(auth: PacsAuth):  # noqa: ANN201 - requests.Session
    import requests

    session = requests.Session()
    if auth.user:
        session.auth = (auth.user, auth.password or "")
    if auth.token:
        session.headers["Authorization"] = f"Bearer {auth.token}"
    session.headers["User-Agent"] = "cxr-pacs-pull"
    return session


def with_retries(fn: Callable[[], T], *, what: str, retries: int, backoff_s: float = 0.5) -> T:
    """Call `fn`; retry timeouts, connection errors and retriable HTTP statuses with exponential backoff.
    Raises PacsHttpError (status known) or PacsUnreachableError once retries are spent."""
    import requests

    attempt = 0
    while True:
        try:
            return fn()
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status not in RETRIABLE_HTTP or attempt >= retries:
                raise PacsHttpError(status, what) from None
            why = f"HTTP {status}"
        except (requests.ConnectionError, requests.Timeout) as exc:
            if attempt >= retries:
                raise PacsUnreachableError(
                    f"the PACS did not answer {what} after {retries + 1} tries ({type(exc).__name__})"
                ) from None
            why = type(exc).__name__
        delay = min(backoff_s * 2**attempt, 30.0)
        attempt += 1
        log.info("%s: %s, retry %d/%d in %.1f s", what, why, attempt, retries, delay)
        time.sleep(delay)
