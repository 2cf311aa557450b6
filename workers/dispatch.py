"""The dispatcher: sends what the ledger holds and has not been indexed to the embed queue, in batches.

Interfaces (for the CLI, the API, the PACS receiver and pull):

- `dispatch_due(settings, ledger, app) -> int`: send every due ledger item (received, or queued/processing and
  untouched for `settings.requeue_after_s`) as `embed` tasks of `settings.queue_batch_size` keys, mark them
  queued, and return how many were sent. Never raises for a broker outage: it stops at the first failed publish,
  logs it, and leaves the rest 'received' for the next call. Safe to call from several processes at once.
- `make_dispatcher(settings) -> Callable[[], int]`: the same as a no-argument callback, with its ledger and app
  built on first call; this is what `services.pacs` (receiver, pull) and the API take as `dispatch`.
- `submit(settings, paths, ...) -> Submitted`: record files in the ledger (key `file:<HMAC of the abs path>`, the
  payload's source_ref: messages never carry a path; extra = label and manifest fields, `update` flag) and
  dispatch best-effort. Used by `cxr index --queue` and POST /v1/index.
  Submission succeeds while Redis is down: the ledger is the acknowledgement, the broker only a delivery channel.
- `Sweep(settings)`: a daemon thread calling `dispatch_due` every `settings.sweep_interval_s` (in `cxr worker`), so
  anything recorded but not yet indexed is (re-)sent after a restart, an outage or a lost message.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.config import Settings
from services.pipeline.ledger import Item, Ledger, file_key

if TYPE_CHECKING:
    from celery import Celery

    from services.manifest import ManifestRow
    from services.pipeline.sources import IngestItem, Unfound

log = logging.getLogger("cxr.dispatch")

# Broker errors that mean "not now": the item stays in the ledger and is sent later.
_BROKER_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError)


def broker_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning "the broker is not there now" (publish failed, nothing was sent)."""
    from kombu.exceptions import OperationalError
    from redis.exceptions import RedisError

    return (OperationalError, RedisError, *_BROKER_ERRORS)


@contextmanager
def _dispatch_lock(ledger: Ledger):  # noqa: ANN202
    # One dispatcher at a time per ledger: two would both read the same 'received' rows and send them twice
    # (harmless, as tasks are idempotent, but it burns attempts). Publishing fails fast, so the wait is short.
    fd = os.open(Path(ledger.path).with_suffix(".dispatch.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def _batches(items: Sequence[Item], size: int) -> list[tuple[str, list[str]]]:
    by_collection: dict[str, list[str]] = {}
    for item in items:
        by_collection.setdefault(item.collection, []).append(item.key)
    return [(c, keys[i : i + size]) for c, keys in by_collection.items() for i in range(0, len(keys), size)]


def dispatch_due(settings: Settings, ledger: Ledger, app: Celery, *, limit: int = 10_000) -> int:
    """Send due ledger items as embed batches and mark them queued; returns how many were sent (0 while Redis
    is down: they stay due and the next call or the sweep sends them)."""
    from workers.app import EMBED_QUEUE, EMBED_TASK

    sent = 0
    errors = broker_errors()
    with _dispatch_lock(ledger):
        ledger.rekey_legacy_files(settings.salt)  # an older ledger's path keys must not reach Redis
        due = ledger.due(requeue_after_s=settings.requeue_after_s, limit=limit)
        for _collection, keys in _batches(due, settings.queue_batch_size):
            try:
                app.send_task(EMBED_TASK, args=[keys], queue=EMBED_QUEUE)
            except errors as exc:
                log.warning("broker unavailable, %d item(s) left for the sweep: %s", len(due) - sent, exc)
                break
            # Marked after the publish: a crash in between only means the item is sent once more.
            ledger.mark_queued(keys)
            sent += len(keys)
    return sent


def make_dispatcher(settings: Settings) -> Callable[[], int]:
    """A `dispatch()` callback for services that must not know Celery (receiver, pull, API)."""
    state: dict[str, Any] = {}
    lock = threading.Lock()

    def dispatch() -> int:
        with lock:
            if not state:
                from workers.app import make_app

                state["ledger"], state["app"] = Ledger(settings.ledger_path), make_app(settings)
            return dispatch_due(settings, state["ledger"], state["app"])

    return dispatch


@dataclass
class Submitted:
    """What `submit` did: items recorded (new or re-armed), already known, and sent to the queue now."""

    recorded: int = 0
    already: int = 0
    sent: int = 0
    keys: list[str] = field(default_factory=list)


def item_extra(label: str | None, row: ManifestRow | None) -> dict[str, Any]:
    """The ledger `extra` of a submitted file: its label and manifest fields (kept local, never in a payload
    except through build_payload's allow-list)."""
    extra: dict[str, Any] = {}
    if label is not None:
        extra["label"] = label
    if row is not None:
        extra["row"] = {
            "path": str(row.path),
            "label": row.label,
            "patient_id": row.patient_id,
            "view": row.view,
            "sex": row.sex,
            "age": row.age,
            "source": row.source,
            "origin_dataset": row.origin_dataset,
        }
    return extra


def submit(
    settings: Settings,
    items: Sequence[IngestItem],
    *,
    collection: str | None = None,
    update: bool = False,
    origin: str = "file",
    ledger: Ledger | None = None,
    app: Celery | None = None,
    dispatch: bool = True,
    unfound: Sequence[Unfound] = (),
) -> Submitted:
    """Record `items` (from services.pipeline.build_items) in the ledger for `collection`, then dispatch
    best-effort. With `update`, items already indexed are re-armed to rewrite their payload (and vector).
    `unfound` (what the walk could not use: FIFOs, vanished files) is recorded as failed at stage 'find', so
    `cxr failures` lists every file that did not land."""
    ledger = ledger or Ledger(settings.ledger_path)
    collection = collection or settings.collection
    out = Submitted()
    salt = settings.salt
    entries = [(file_key(i.path, salt), Path(i.path).absolute(), item_extra(i.label, i.row)) for i in items]
    fresh = ledger.record_many(entries, origin=origin, collection=collection, update=update)
    out.recorded = sum(fresh)
    out.already = len(fresh) - out.recorded
    out.keys = [key for key, _, _ in entries]
    for miss in unfound:
        key = file_key(miss.path, salt)
        ledger.record(key, Path(miss.path).absolute(), origin=origin, collection=collection)
        ledger.mark_failed(key, "find", miss.reason, permanent=True)
    if dispatch:
        if app is None:
            from workers.app import make_app

            app = make_app(settings)
        out.sent = dispatch_due(settings, ledger, app)
    return out


class Sweep(threading.Thread):
    """Calls `dispatch_due` every `settings.sweep_interval_s` until `stop()`; the reconciliation loop."""

    def __init__(self, settings: Settings, *, app: Celery | None = None) -> None:
        super().__init__(name="cxr-sweep", daemon=True)
        self.settings = settings
        self._app = app
        self._stop = threading.Event()
        self.sent = 0

    def run(self) -> None:
        from workers.app import make_app

        ledger = Ledger(self.settings.ledger_path)
        app = self._app or make_app(self.settings)
        while not self._stop.is_set():
            try:
                self.sent += dispatch_due(self.settings, ledger, app)
            except Exception:  # noqa: BLE001 - the sweep must outlive any one bad round (a locked ledger, ...)
                log.exception("sweep round failed; trying again in %.0f s", self.settings.sweep_interval_s)
            self._stop.wait(self.settings.sweep_interval_s)

    def stop(self) -> None:
        self._stop.set()
