"""Keeps the Redis visibility lease of every message a live worker holds, so a long task is never handed out twice.

kombu's Redis transport emulates acknowledgements: a delivered message waits in the `unacked` hash, scored in the
`unacked_index` sorted set by its delivery time, and any worker re-queues the ones older than `visibility_timeout`,
whether the worker that holds them is alive or not (kombu.transport.redis.QoS.restore_visible). Up to kombu 5.6
that restore ran about once per 100 s whatever the settings said (a fixed 10 s timer, a scan on every 10th tick);
kombu 5.7.0 honours `unacked_restore_interval` and `unacked_restore_throttle`, so a task that outlived the visibility
timeout (a first model load, a big batch, an HNSW refresh) was re-queued within a second and ran twice.

The fix is a lease: while this worker holds a message unacknowledged (running, reserved, or waiting for its
countdown), its delivery score is moved to "now" every `renew_interval_s(visibility_timeout)`; only a worker that
died stops renewing, and its messages come back after `visibility_timeout`, as before. The scores are kombu's own
(`ZADD ... XX` never adds a tag kombu has already restored or acknowledged). Celery-specific, so it lives here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("cxr.lease")

UNACKED_INDEX_KEY = "unacked_index"  # kombu.transport.redis.Channel.unacked_index_key


def renew_interval_s(visibility_timeout_s: float) -> float:
    """How often a held lease is renewed: four times per visibility timeout, between 0.25 s and 60 s."""
    return min(60.0, max(0.25, visibility_timeout_s / 4))


def unacked_index_key(transport_options: dict[str, Any]) -> str:
    """The sorted set kombu scores deliveries in, with the transport's `global_keyprefix`."""
    prefix = transport_options.get("global_keyprefix") or ""
    return prefix + transport_options.get("unacked_index_key", UNACKED_INDEX_KEY)


def renew(client: Any, key: str, tags: Iterable[str], now: float | None = None) -> int:
    """Move the delivery score of `tags` to `now`; tags no longer in the set (acknowledged, restored) stay out.
    Returns how many were renewed."""
    tags = list(tags)
    if not tags:
        return 0
    stamp = time.time() if now is None else now
    client.zadd(key, dict.fromkeys(tags, stamp), xx=True, ch=True)
    return len(tags)


def held_tags(consumer: Any) -> list[str]:
    """Delivery tags the Celery consumer holds unacknowledged (kombu's virtual QoS `_delivered`, less those whose
    acknowledgement is on its way)."""
    task_consumer = getattr(consumer, "task_consumer", None)
    qos = getattr(getattr(task_consumer, "channel", None), "qos", None)
    delivered = getattr(qos, "_delivered", None)
    if delivered is None:
        return []
    dirty = getattr(qos, "_dirty", set())
    for _ in range(5):  # the event loop may change the dict while this thread copies it
        try:
            return [tag for tag in list(delivered) if tag not in dirty]
        except RuntimeError:
            continue
    return []


class LeaseRenewer(threading.Thread):
    """Renews the leases `tags()` names every `interval_s` until `stop()`; a Redis error is logged and the next
    round tries again (kombu itself reconnects the consumer)."""

    def __init__(self, client: Any, key: str, tags: Callable[[], list[str]], interval_s: float) -> None:
        super().__init__(name="cxr-lease", daemon=True)
        self.client, self.key, self.tags, self.interval_s = client, key, tags, interval_s
        self._stop = threading.Event()
        self.renewed = 0

    def run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.renewed += renew(self.client, self.key, self.tags())
            except Exception as exc:  # noqa: BLE001 - Redis away for a moment; the lease is renewed next round
                log.warning("could not renew task leases: %s", exc)

    def stop(self) -> None:
        self._stop.set()


def lease_step() -> type:
    """A Celery consumer bootstep that runs a LeaseRenewer beside the consumer (added by workers.app.make_app)."""
    import redis
    from celery import bootsteps

    class LeaseKeeper(bootsteps.StartStopStep):
        requires = {"celery.worker.consumer.tasks:Tasks"}

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self.renewer: LeaseRenewer | None = None

        def start(self, c: Any) -> None:
            # Started once per worker process and never stopped: the consumer restarts this step after a broker
            # outage (it reads `c` afresh every round), and a warm shutdown still runs tasks after the consumer
            # stopped; the daemon thread ends with the process.
            if self.renewer is not None and self.renewer.is_alive():
                return
            conf = c.app.conf
            options = dict(conf.broker_transport_options or {})
            timeout = float(options.get("visibility_timeout", 3600))
            client = redis.Redis.from_url(
                conf.broker_url,
                socket_timeout=options.get("socket_timeout"),
                socket_connect_timeout=options.get("socket_connect_timeout"),
            )
            self.renewer = LeaseRenewer(
                client, unacked_index_key(options), lambda: held_tags(c), renew_interval_s(timeout)
            )
            self.renewer.start()

    return LeaseKeeper
