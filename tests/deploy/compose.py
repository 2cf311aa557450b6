"""Read docker-compose.yml the way Compose does, for the tests: YAML (with merge keys), `${VAR...}` interpolation
and durations. No Docker engine or docker CLI is involved."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"

# $$ (a literal $), ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, ${NAME:+alt}, $NAME
_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


@cache
def load_compose() -> dict[str, Any]:
    """The parsed compose file (anchors and `<<` merges resolved by PyYAML)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


class MissingVariable(ValueError):
    """A `${NAME:?message}` variable was unset or empty: Compose refuses to start, with the message."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Substitute variables as Compose does; raises MissingVariable for an unset required one."""

    def repl(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name = m["braced"] or m["bare"]
        op, arg = m["op"], m["arg"] or ""
        value = env.get(name)
        unset_or_empty = not value
        missing = unset_or_empty if op and op.startswith(":") else value is None
        if op in ("-", ":-"):
            return arg if missing else value  # type: ignore[return-value]
        if op in ("?", ":?"):
            if missing:
                raise MissingVariable(f"{name}: {arg}")
            return value  # type: ignore[return-value]
        if op in ("+", ":+"):
            return "" if missing else arg
        return value or ""

    return _VAR.sub(repl, text)


def variables(node: Any) -> Iterator[tuple[str, str | None]]:
    """Every (variable, operator) interpolated anywhere in a parsed compose tree (keys and values)."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from variables(key)
            yield from variables(value)
    elif isinstance(node, list):
        for item in node:
            yield from variables(item)
    elif isinstance(node, str):
        for m in _VAR.finditer(node):
            if not m["escaped"]:
                yield (m["braced"] or m["bare"]), m["op"]


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|ns)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def duration_s(text: str) -> float:
    """A Compose duration (`1m30s`, `500ms`, `10s`) in seconds."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise ValueError(f"not a compose duration: {text!r}")
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's `environment`, as a dict whichever of the two forms (map or list) it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) for item in env)
        return {p[0]: (p[1] if len(p) > 1 else "") for p in pairs}
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def docker_healthcheck(service: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """The service's compose healthcheck in the form the Docker API (docker-py) takes: durations in nanoseconds,
    variables interpolated."""
    hc = service["healthcheck"]
    test = hc["test"]
    test = ["CMD-SHELL", test] if isinstance(test, str) else list(test)
    out: dict[str, Any] = {"test": [interpolate(part, env) for part in test]}
    for key, api_key in (("interval", "interval"), ("timeout", "timeout"), ("start_period", "start_period")):
        if key in hc:
            out[api_key] = int(duration_s(hc[key]) * 1e9)
    if "retries" in hc:
        out["retries"] = int(hc["retries"])
    return out


def named_volume_mounts(service: Mapping[str, Any]) -> dict[str, str]:
    """{target path: named volume} for a service's short-syntax volume entries that name a volume (not a path)."""
    mounts: dict[str, str] = {}
    for entry in service.get("volumes") or []:
        source, target = entry.split(":")[:2]
        if not source.startswith((".", "/", "$", "~")):
            mounts[target] = source
    return mounts
