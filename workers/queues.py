"""The queue vocabulary every worker module shares: queue and task names, and what counts as a broker outage.

Kept apart from workers.app so that the app (which registers the tasks), the tasks and the publisher import it
and not each other.
"""

from __future__ import annotations

from typing import Any

EMBED_QUEUE = "embed"
INDEX_QUEUE = "index"
QUEUES = (EMBED_QUEUE, INDEX_QUEUE)  # what `cxr worker` runs a celery child for
# Reports (services.reports) have their own queue, consumed by the index writer's process: the search runs where the
# embedded store is open (workers.supervisor).
REPORT_QUEUE = "report"
BROKER_QUEUES = (*QUEUES, REPORT_QUEUE)  # what `cxr status` counts and `cxr forget` purges
# kombu's Redis transport keeps one list per queue and priority step: the queue's name, then these suffixes
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
EMBED_TASK = "cxr.embed"
INDEX_TASK = "cxr.index"
REPORT_TASK = "cxr.report"

# Broker errors that mean "not now": the item stays in the ledger and is sent later.
_BROKER_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError)


def broker_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning "the broker is not there now" (publish failed, nothing was sent)."""
    from kombu.exceptions import OperationalError
    from redis.exceptions import RedisError

    return (OperationalError, RedisError, *_BROKER_ERRORS)


def queue_depths(redis_url: str, *, timeout_s: float = 0.5) -> dict[str, Any]:
    """Messages waiting per queue and unacknowledged (running or held by a dead worker), read from Redis;
    {"error": ...} when Redis does not answer within `timeout_s`."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        pipe = client.pipeline()
        for q in BROKER_QUEUES:
            for suffix in PRIORITY_SUFFIXES:
                pipe.llen(q + suffix)
        pipe.hlen("unacked")
        counts = pipe.execute()
    except (redis.RedisError, OSError) as exc:
        return {"error": f"Redis at {redis_url} does not answer ({type(exc).__name__}: {exc})"}
    finally:
        client.close()
    n = len(PRIORITY_SUFFIXES)
    out: dict[str, Any] = {q: sum(counts[i * n : (i + 1) * n]) for i, q in enumerate(BROKER_QUEUES)}
    out["unacked"] = counts[-1]
    return out
