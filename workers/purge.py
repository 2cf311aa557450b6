"""Take a forgotten patient's messages out of the queues (`cxr forget`): kombu's Redis lists are scanned and every
waiting message whose body names one of the erased ledger keys is removed. A batch message also holding other
items' keys goes too: those items stay 'queued' in the ledger, and the sweep sends them again after
CXR_REQUEUE_AFTER_S. Messages a worker holds (unacknowledged) are left to it: their ledger rows are gone, so the
embed task skips them, and the index writer refuses any point a tombstone names."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable

from services.config import Settings
from workers.queues import BROKER_QUEUES, PRIORITY_SUFFIXES


def _body(raw: bytes) -> bytes:
    try:
        envelope = json.loads(raw)
        body = envelope.get("body", "")
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            return base64.b64decode(body)
        return body.encode() if isinstance(body, str) else b""
    except (ValueError, TypeError, AttributeError):
        return raw


def purger(settings: Settings) -> Callable[[set[str]], int] | None:
    """`purge_keys` on this deployment's broker, as services.governance.forget takes it (None without Redis)."""
    if not settings.redis_url:
        return None
    return lambda keys: purge_keys(settings.redis_url, keys)


def purge_keys(redis_url: str, keys: Iterable[str], *, timeout_s: float = 5.0) -> int:
    """Remove the waiting messages that name any of `keys`; how many were removed."""
    import redis

    wanted = [k.encode() for k in set(keys)]
    if not wanted:
        return 0
    client = redis.Redis.from_url(redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    removed = 0
    try:
        for queue in BROKER_QUEUES:
            for suffix in PRIORITY_SUFFIXES:
                name = queue + suffix
                for raw in client.lrange(name, 0, -1):
                    body = _body(raw)
                    if any(k in body for k in wanted):
                        removed += int(client.lrem(name, 0, raw))
    finally:
        client.close()
    return removed
