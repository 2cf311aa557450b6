"""Named API tokens with scopes, kept in one file (CXR_API_TOKENS_FILE), and the cache the API reads them through.

The file holds JSON lines, one token per line; blank lines and lines starting with `#` are ignored:

    {"name": "ward-viewer", "scopes": ["search"], "sha256": "<64 hex>", "created_at": "2025-01-31T09:00:00Z"}

- The secret itself is never written: only its SHA-256. A plain hash is right here (no salt, no slow KDF) because
  every secret is 32 random bytes: nobody can guess one from its hash, and a slow hash would only cost every request.
- `cxr token add|revoke` rewrite the file atomically (0600, under a lock file, so two at once lose nothing) and keep
  every other line as it was, comments and bad lines included.
- A line that does not parse (hand-edited) is skipped, never half-read: it can take access away, never grant it.
  The API logs each such line once per version of the file; `cxr token list` warns about it.
- The API stats the file on each request (microseconds) and rereads it when its inode, size, mtime, ctime or mode
  moved, so an added or revoked token holds from the next request, with no restart. A missing or unreadable file
  holds no token (the API stays closed); one that others than its owner may write is reported in the log.
"""

from __future__ import annotations

import difflib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from services.config import Settings
from services.durable import write_atomically
from services.errors import ConfigError, CxrError

log = logging.getLogger("cxr.api")

SEARCH = "search"  # search, similar, points, thumbnails, render, explain (and reports)
INDEX = "index"  # POST /v1/index
ADMIN = "admin"  # all of the above, raw payloads (UIDs, patient hash), audit, forget, tokens
SCOPES = (SEARCH, INDEX, ADMIN)
API_TOKEN_NAME = "api-token"  # the actor of CXR_API_TOKEN
ANONYMOUS = "anonymous"  # the actor when the API is open (no token of any kind configured)
RESERVED_NAMES = frozenset({API_TOKEN_NAME, ANONYMOUS})
SECRET_PREFIX = "cxr_"  # tells a leaked secret apart in logs and secret scanners
HEADER = "# cxr API tokens (`cxr token add|list|revoke`): one JSON object per line; only SHA-256 of the secrets"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class TokenLineError(ValueError):
    """One line of the tokens file that cannot be used, and why."""


@dataclass(frozen=True)
class ApiToken:
    """One named token as stored: its scopes as written and the SHA-256 (hex) of its secret."""

    name: str
    scopes: tuple[str, ...]
    sha256: str
    created_at: str

    @property
    def granted(self) -> frozenset[str]:
        """What the token may do: its scopes, and every scope when one of them is `admin`."""
        return granted_scopes(self.scopes)

    def to_line(self) -> str:
        return json.dumps(
            {"name": self.name, "scopes": list(self.scopes), "sha256": self.sha256, "created_at": self.created_at}
        )


@dataclass(frozen=True)
class TokenLine:
    """One line of the file as read: its text, and the token it holds or why it holds none (`problem`);
    blank lines and comments have neither."""

    number: int
    text: str
    token: ApiToken | None = None
    problem: str | None = None
    name: str | None = None  # the name a line gives, even a line skipped for another reason


@dataclass(frozen=True)
class TokenFile:
    """A tokens file as read (an absent file reads as empty)."""

    path: Path
    lines: tuple[TokenLine, ...]

    @property
    def tokens(self) -> tuple[ApiToken, ...]:
        return tuple(line.token for line in self.lines if line.token is not None)

    @property
    def problems(self) -> tuple[str, ...]:
        """`line N: why` for each line skipped."""
        return tuple(f"line {line.number}: {line.problem}" for line in self.lines if line.problem)


def granted_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """The scopes a token with `scopes` holds: `admin` implies the others."""
    held = frozenset(scopes)
    return frozenset(SCOPES) if ADMIN in held else held


def parse_scopes(values: Iterable[str]) -> tuple[str, ...]:
    """Scope names from comma-separated values (`search,index`), in SCOPES order; ValueError naming an unknown
    one and its close match."""
    named = [part.strip().lower() for value in values for part in value.split(",") if part.strip()]
    if not named:
        raise ValueError(f"give at least one scope: {', '.join(SCOPES)}")
    for scope in named:
        if scope not in SCOPES:
            close = difflib.get_close_matches(scope, SCOPES, n=1)
            maybe = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"unknown scope {scope!r}{maybe}: the scopes are {', '.join(SCOPES)}")
    return tuple(s for s in SCOPES if s in named)


def check_name(name: str) -> str:
    """The name when it is usable: 1-64 letters, digits, `-`, `_` or `.`, starting with a letter or digit, and not
    one of the names the API gives itself; ValueError otherwise."""
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a token name: use 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )
    if name in RESERVED_NAMES:
        meaning = "CXR_API_TOKEN" if name == API_TOKEN_NAME else "callers of an API without tokens"
        raise ValueError(f"{name!r} is reserved: the audit trail's name for {meaning}")
    return name


def hash_secret(secret: str) -> str:
    """The SHA-256 (hex) the file keeps of a secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    """A fresh secret: 32 random bytes, URL-safe base64, after a recognisable prefix."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def parse_line(text: str) -> ApiToken:
    """The token a line of the file holds; TokenLineError saying what is wrong with it."""
    try:
        data = json.loads(text)
    except ValueError:
        raise TokenLineError("not a JSON object") from None
    if not isinstance(data, dict):
        raise TokenLineError("not a JSON object")
    name, scopes, digest = data.get("name"), data.get("scopes"), data.get("sha256")
    if not isinstance(name, str):
        raise TokenLineError("no 'name'")
    try:
        check_name(name)
    except ValueError as exc:
        raise TokenLineError(str(exc)) from None
    if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
        raise TokenLineError(f"token {name!r}: 'scopes' must be a non-empty list of {', '.join(SCOPES)}")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise TokenLineError(f"token {name!r}: unknown scope {', '.join(unknown)}")
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise TokenLineError(f"token {name!r}: 'sha256' must be 64 lowercase hex digits (the secret's hash)")
    created = data.get("created_at")
    return ApiToken(name, tuple(s for s in SCOPES if s in scopes), digest, created if isinstance(created, str) else "")


def parse_token_file(path: Path, text: str) -> TokenFile:
    """Every line of `text`; a line naming a token already named above is skipped (the first one counts)."""
    lines: list[TokenLine] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            lines.append(TokenLine(number, raw))
            continue
        try:
            token = parse_line(stripped)
        except TokenLineError as exc:
            lines.append(TokenLine(number, raw, problem=str(exc), name=_name_in(stripped)))
            continue
        if token.name in seen:
            lines.append(TokenLine(number, raw, problem=f"token {token.name!r} is named twice", name=token.name))
            continue
        seen.add(token.name)
        lines.append(TokenLine(number, raw, token=token, name=token.name))
    return TokenFile(path, tuple(lines))


def _name_in(text: str) -> str | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


def read_token_file(path: Path) -> TokenFile:
    """The tokens file at `path`; empty when it does not exist. OSError when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return TokenFile(path, ())
    return parse_token_file(path, text)


def tokens_path(settings: Settings) -> Path:
    """CXR_API_TOKENS_FILE, or a ConfigError saying how to set it."""
    if settings.api_tokens_file is None:
        raise ConfigError(
            "CXR_API_TOKENS_FILE is not set: there is no file to keep named tokens in",
            "Set it, e.g. CXR_API_TOKENS_FILE=/etc/cxr/tokens.jsonl, for `cxr token` and for `cxr serve`.",
        )
    return Path(settings.api_tokens_file)


def auth_configured(settings: Settings) -> bool:
    """True when the API asks for a token: CXR_API_TOKEN or CXR_API_TOKENS_FILE is set (even to an empty file)."""
    return settings.api_token is not None or settings.api_tokens_file is not None


def add_token(path: Path, name: str, scopes: Iterable[str], *, now: datetime | None = None) -> tuple[ApiToken, str]:
    """Add a token named `name` with `scopes` to the file (created 0600 if absent) and return it with its secret,
    which is kept nowhere: the caller shows it once. CxrError when the name is taken."""
    check_name(name)
    granted = parse_scopes(scopes)
    secret = new_secret()
    created = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    token = ApiToken(name, granted, hash_secret(secret), created)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        current = read_token_file(path)
        if any(line.name == name for line in current.lines):
            raise CxrError(
                f"a token named {name!r} is already in {path}",
                f"Choose another name, or `cxr token revoke {name}` first.",
            )
        texts = [line.text for line in current.lines] or [HEADER]
        _write(path, [*texts, token.to_line()])
    return token, secret


def revoke_token(path: Path, name: str) -> ApiToken | None:
    """Remove every line naming `name` (a skipped duplicate too) and return the token that was in force (None when
    only skipped lines named it). CxrError when no line names it."""
    if not path.exists():
        raise CxrError(f"there is no tokens file {path}", "`cxr token add NAME --scope ...` creates it.")
    with _locked(path):
        current = read_token_file(path)
        gone = [line for line in current.lines if line.name == name]
        if not gone:
            known = ", ".join(t.name for t in current.tokens) or "none"
            raise CxrError(f"no token named {name!r} in {path}", f"`cxr token list` shows them (here: {known}).")
        _write(path, [line.text for line in current.lines if line.name != name])
    return next((line.token for line in gone if line.token is not None), None)


def _write(path: Path, texts: list[str]) -> None:
    # write_atomically's temporary file comes from mkstemp, so the file is 0600 whatever the umask
    write_atomically(path, ("\n".join(texts) + "\n").encode())


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside `path` while it is read and rewritten, so concurrent changes are not lost."""
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class TokenCache:
    """The tokens of one file as the API sees them: each call stats the file and rereads it only when it changed.

    A file that is missing or unreadable holds no token (fail closed); each problem is logged once per version.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._version: tuple[int, ...] | str | None = None
        self._tokens: tuple[ApiToken, ...] = ()

    def tokens(self) -> tuple[ApiToken, ...]:
        try:
            st = os.stat(self.path)
            version: tuple[int, ...] | str = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)
        except FileNotFoundError:
            version = "missing"
        except OSError as exc:
            version = f"unreadable ({exc})"
        with self._lock:
            if version != self._version:
                self._tokens = self._load(version)
                self._version = version
            return self._tokens

    def _load(self, version: tuple[int, ...] | str) -> tuple[ApiToken, ...]:
        if version == "missing":
            log.warning("the tokens file %s does not exist: no named token is accepted (`cxr token add`)", self.path)
            return ()
        if isinstance(version, str):
            log.error("the tokens file %s is %s: no named token is accepted", self.path, version)
            return ()
        try:
            read = read_token_file(self.path)
        except OSError as exc:
            log.error("the tokens file %s cannot be read, so no named token is accepted: %s", self.path, exc)
            return ()
        for problem in read.problems:
            log.warning("tokens file %s, %s: skipped", self.path, problem)
        if version[-1] & (stat.S_IWGRP | stat.S_IWOTH):  # whoever can write it can give themselves a token
            mode = oct(stat.S_IMODE(version[-1]))
            log.warning("the tokens file %s is writable by others than its owner (mode %s): chmod 600", self.path, mode)
        log.info("tokens file %s: %d token(s)", self.path, len(read.tokens))
        return read.tokens

    def lookup(self, secret: str) -> ApiToken | None:
        """The token whose secret this is, or None. Each stored hash is compared in constant time, and all of
        them are, so the time taken does not tell which one matched."""
        digest = hash_secret(secret)
        found = None
        for token in self.tokens():
            if hmac.compare_digest(digest, token.sha256):
                found = token
        return found
