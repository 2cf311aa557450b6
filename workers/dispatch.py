"""How the library's intake (services.pipeline.submission) publishes a batch: as a Celery `cxr.embed` task.

- `celery_publish(app)`: the `Publish` callable over an app; broker errors become `BrokerUnavailable`.
- `make_publish(settings)`: the same, with the app built on first call (a `PublishFactory` for the sweep).
- `make_dispatcher(settings)`: a no-argument `dispatch()` for services that must not know Celery (receiver,
  pull, API): sends every due ledger item and returns how many.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from services.config import Settings
from services.pipeline.ledger import Ledger
from services.pipeline.submission import BrokerUnavailable, Publish, dispatch_due
from workers.queues import EMBED_QUEUE, EMBED_TASK, REPORT_QUEUE, REPORT_TASK, broker_errors

if TYPE_CHECKING:
    from celery import Celery


def celery_publish(app: Celery) -> Publish:
    """Publish a (collection, keys) batch as one `cxr.embed` task on the embed queue."""
    errors = broker_errors()

    def publish(collection: str, keys: list[str]) -> None:
        try:
            app.send_task(EMBED_TASK, args=[keys, collection], queue=EMBED_QUEUE)
        except errors as exc:
            raise BrokerUnavailable(str(exc)) from exc

    return publish


def report_publish(app: Celery) -> Callable[[str, str], None]:
    """Publish one `cxr.report` task (collection, film key) on the report queue (services.reports.trigger)."""

    def publish(collection: str, key: str) -> None:
        app.send_task(REPORT_TASK, args=[collection, key], queue=REPORT_QUEUE)

    return publish


def make_report_publish(settings: Settings) -> Callable[[str, str], None]:
    """`report_publish` over an app for `settings`, built on the first report."""
    state: dict[str, Callable[[str, str], None]] = {}
    lock = threading.Lock()

    def publish(collection: str, key: str) -> None:
        with lock:
            if "publish" not in state:
                from workers.app import make_app

                state["publish"] = report_publish(make_app(settings))
        state["publish"](collection, key)

    return publish


def make_publish(settings: Settings) -> Publish:
    """`celery_publish` over an app for `settings`, built on the first batch (a lazy PublishFactory result)."""
    state: dict[str, Publish] = {}
    lock = threading.Lock()

    def publish(collection: str, keys: list[str]) -> None:
        with lock:
            if "publish" not in state:
                from workers.app import make_app

                state["publish"] = celery_publish(make_app(settings))
        state["publish"](collection, keys)

    return publish


def make_dispatcher(settings: Settings) -> Callable[[], int]:
    """A `dispatch()` callback for services that must not know Celery (receiver, pull, API)."""
    state: dict[str, Any] = {}
    lock = threading.Lock()

    def dispatch() -> int:
        with lock:
            if not state:
                state["ledger"], state["publish"] = Ledger(settings.ledger_path), make_publish(settings)
            return dispatch_due(settings, state["ledger"], state["publish"])

    return dispatch
