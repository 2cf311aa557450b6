"""The Celery app, built from the one Settings object: JSON only, named queues, at-least-once delivery.

Delivery is at least once and the ledger makes it safe: a task is acknowledged only after it ran
(`task_acks_late`), a pool child that dies requeues its task (`task_reject_on_worker_lost`), and a worker
reserves one task at a time (`worker_prefetch_multiplier=1`). A whole worker that dies leaves its task
unacknowledged in Redis, which any live worker restores after `visibility_timeout` (looked for every
`unacked_restore_interval`); a live worker renews the lease of what it holds (workers.lease), so a task longer than
the visibility timeout is never handed out a second time. A task that crashes its worker every time is stopped by
the ledger's attempt counter, not by Celery. Short broker timeouts make publishing fail fast while Redis is down
(celery#6046: `delay()` can hang there); the item then stays 'received' in the ledger and the sweep sends it later.

`celery -A workers.app:app worker` finds `app` here; it is built on first access, not at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from services.config import Settings
from workers.queues import EMBED_QUEUE, EMBED_TASK, INDEX_QUEUE, INDEX_TASK, REPORT_QUEUE, REPORT_TASK

if TYPE_CHECKING:
    from celery import Celery


# Publishing: at most this many quick attempts, then the caller gets the error (the ledger keeps the item).
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.3}


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for `settings` (also what the tests and `cxr status` read)."""
    timeout = settings.broker_timeout_s
    return {
        "broker_url": settings.redis_url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,  # the ledger is where outcomes live; no result backend needed
        "result_backend": None,
        "task_default_queue": EMBED_QUEUE,
        "task_routes": {
            EMBED_TASK: {"queue": EMBED_QUEUE},
            INDEX_TASK: {"queue": INDEX_QUEUE},
            REPORT_TASK: {"queue": REPORT_QUEUE},
        },
        "task_create_missing_queues": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": timeout,
        "broker_pool_limit": 4,
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": settings.unacked_restore_interval_s,
            "unacked_restore_throttle": 1,
            # restore_visible holds a Redis mutex for a moment; a worker killed while holding it blocked every
            # restore for kombu's default 300 s (seen in the kill-mid-batch test), so it expires after 30 s
            "unacked_mutex_expire": 30,
            "socket_connect_timeout": timeout,
            "socket_timeout": max(timeout, 5.0),  # above kombu's 1 s BRPOP poll, or an idle worker would time out
            "retry_on_timeout": False,
            # a publisher's connection attempts (kombu's default_channel): a few quick ones, not 2-30 s back-offs
            "max_retries": 1,
            "interval_start": 0.1,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "task_publish_retry": True,
        "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
        "worker_disable_rate_limits": True,
        "worker_enable_remote_control": False,
    }


def make_app(settings: Settings) -> Celery:
    """A Celery app for `settings`, with the cxr tasks registered. The settings ride along as `app.cxr_settings`."""
    from celery import Celery

    app = Celery("cxr", set_as_current=False)
    app.config_from_object(celery_config(settings))
    app.cxr_settings = settings  # type: ignore[attr-defined]
    from workers import tasks
    from workers.lease import lease_step
    from workers.watchdog import watchdog_step

    tasks.register(app)
    app.steps["consumer"].add(lease_step())  # a live worker keeps its messages' visibility leases
    app.steps["consumer"].add(watchdog_step())  # a worker whose consumer is lost exits, to be restarted
    return app


_default: Celery | None = None


def __getattr__(name: str) -> Any:
    # `celery -A workers.app:app` asks for `app`: build it from the environment then, once, not at import.
    global _default
    if name in ("app", "celery"):
        if _default is None:
            _default = make_app(Settings())
            _default.set_current()
        return _default
    raise AttributeError(name)
