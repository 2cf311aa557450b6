"""The one intake of the background queue: record in the ledger, then hand due items to a `Publish` callable.

Every way in (`cxr index --queue`, POST /v1/index, the DICOM receiver, the PACS pull) records its items here
and dispatches through `dispatch_due`; the shells only say how a batch is published (workers.dispatch sends it
as a Celery task). The ledger is the acknowledgement, the broker only a delivery channel: submission succeeds
while the broker is down, and the sweep sends what is due once it is back.

- `submit(settings, items, publish=...)`: record files (key `file:<HMAC of the abs path>`, the payload's
  source_ref: messages never carry a path; extra = label and manifest fields, `update` flag), then dispatch.
- `dispatch_due(settings, ledger, publish)`: send every due item (received, or queued/processing and untouched
  for `settings.requeue_after_s`) in batches of `settings.queue_batch_size` keys of one collection, mark them
  queued, and return how many were sent. Stops at the first `BrokerUnavailable`, leaving the rest due.
- `Sweep(settings, publish)`: a daemon thread calling `dispatch_due` every `settings.sweep_interval_s` (and deleting
  the API uploads no item needs any more, services.pipeline.uploads).
- `item_extra` / `ingest_item`: the ledger `extra` of a submitted file, and back to an IngestItem.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.config import Settings
from services.manifest import ManifestRow
from services.pipeline.ledger import Item, Ledger, file_key
from services.pipeline.refs import spool_ref
from services.pipeline.sources import IngestItem, Unfound

log = logging.getLogger("cxr.dispatch")

Publish = Callable[[str, list[str]], None]  # (collection, keys): hand one batch to the workers, or raise
PublishFactory = Callable[[], Publish]  # builds the publisher on first use (a shell's broker connection)


class BrokerUnavailable(Exception):  # noqa: N818 - a condition, like TimeoutError
    """The broker did not take a batch (down, unreachable): nothing was sent; the items stay due."""


@contextmanager
def _dispatch_lock(ledger: Ledger) -> Iterator[None]:
    # One dispatcher at a time per ledger: two would both read the same 'received' rows and send them twice
    # (harmless, as tasks are idempotent, but it burns attempts). Publishing fails fast, so the wait is short.
    fd = os.open(Path(ledger.path).with_suffix(".dispatch.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def due_batches(items: Sequence[Item], size: int) -> list[tuple[str, list[str]]]:
    """(collection, keys) batches of at most `size` keys, one collection each, in the order given."""
    by_collection: dict[str, list[str]] = {}
    for item in items:
        by_collection.setdefault(item.collection, []).append(item.key)
    return [(c, keys[i : i + size]) for c, keys in by_collection.items() for i in range(0, len(keys), size)]


def dispatch_due(settings: Settings, ledger: Ledger, publish: Publish, *, limit: int = 10_000) -> int:
    """Send due ledger items as batches and mark them queued; returns how many were sent (0 while the broker is
    down: they stay due and the next call or the sweep sends them)."""
    sent = 0
    with _dispatch_lock(ledger):
        ledger.rekey_legacy_files(settings.salt)  # an older ledger's path keys must not reach the broker
        due = ledger.due(requeue_after_s=settings.requeue_after_s, limit=limit)
        for collection, keys in due_batches(due, settings.queue_batch_size):
            try:
                publish(collection, keys)
            except BrokerUnavailable as exc:
                log.warning("broker unavailable, %d item(s) left for the sweep: %s", len(due) - sent, exc)
                break
            # Marked after the publish: a crash in between only means the item is sent once more.
            ledger.mark_queued(keys, collection=collection)
            sent += len(keys)
    return sent


@dataclass
class Submitted:
    """What `submit` did: items recorded (new or re-armed), already known, sent to the queue now by this call,
    sent meanwhile by another process's dispatcher (the receiver, the API, a worker's sweep), and still waiting
    for the broker ('received': the sweep sends them once it answers)."""

    recorded: int = 0
    already: int = 0
    sent: int = 0
    sent_elsewhere: int = 0
    waiting: int = 0
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


def file_stat(path: str | Path) -> dict[str, Any]:
    """`{"stat": [size, mtime_ns]}` of a file, in its ledger `extra`: a file submitted again with another stat
    changed in place, and is indexed again (Ledger.record); `{}` when it cannot be read now (the worker says why)."""
    try:
        st = os.stat(path)
    except OSError:
        return {}
    return {"stat": [st.st_size, st.st_mtime_ns]}


def ingest_item(item: Item) -> IngestItem:
    """The ingest item of a ledger row: its file, and the label and manifest fields `submit` put in `extra`."""
    row = None
    if item.extra.get("row"):
        fields = dict(item.extra["row"])
        fields["path"] = Path(fields["path"])
        row = ManifestRow(**fields)
    uid = item.key[len("sop:") :] if item.key.startswith("sop:") else None  # a spooled instance
    return IngestItem(Path(item.path), item.extra.get("label"), row, ref=spool_ref(uid) if uid else None)


def submit(
    settings: Settings,
    items: Sequence[IngestItem],
    *,
    publish: Publish | None,
    collection: str | None = None,
    update: bool = False,
    origin: str = "file",
    ledger: Ledger | None = None,
    unfound: Sequence[Unfound] = (),
) -> Submitted:
    """Record `items` (from services.pipeline.build_items) in the ledger for `collection`, then dispatch
    best-effort through `publish` (None: record only; the sweep sends them). With `update`, items already indexed
    are re-armed to rewrite their payload (and vector). `unfound` (what the walk could not use: FIFOs, vanished
    files) is recorded as failed at stage 'find', so `cxr failures` lists every file that did not land."""
    ledger = ledger or Ledger(settings.ledger_path)
    collection = collection or settings.collection
    out = Submitted()
    salt = settings.salt
    entries = [
        (file_key(i.path, salt), Path(i.path).absolute(), item_extra(i.label, i.row) | file_stat(i.path)) for i in items
    ]
    fresh = ledger.record_many(entries, origin=origin, collection=collection, update=update)
    out.recorded = sum(fresh)
    out.already = len(fresh) - out.recorded
    out.keys = [key for key, _, _ in entries]
    for miss in unfound:
        key = file_key(miss.path, salt)
        ledger.record(key, Path(miss.path).absolute(), origin=origin, collection=collection)
        ledger.mark_failed(key, "find", miss.reason, permanent=True, collection=collection)
    if publish is not None:
        out.sent = dispatch_due(settings, ledger, publish)
        # Another dispatcher may have sent our items between record and dispatch: say so, not "sent 0".
        states = [i.state for i in ledger.items(out.keys, collection)]
        out.waiting = states.count("received")
        out.sent_elsewhere = max(0, out.recorded - out.sent - out.waiting)
    return out


class Sweep(threading.Thread):
    """Calls `dispatch_due` every `settings.sweep_interval_s` until `stop()`; the reconciliation loop.
    `publisher` builds the Publish callable in this thread, on its first round."""

    def __init__(self, settings: Settings, publisher: PublishFactory) -> None:
        super().__init__(name="cxr-sweep", daemon=True)
        self.settings = settings
        self._publisher = publisher
        self._stop = threading.Event()
        self.sent = 0

    def run(self) -> None:
        from services.pipeline.heartbeats import Heartbeats
        from services.pipeline.uploads import release_uploads

        ledger = Ledger(self.settings.ledger_path)
        heartbeats = Heartbeats(self.settings.ledger_path)
        publish = self._publisher()
        while not self._stop.is_set():
            try:
                # a dead worker's 'processing' items are due at once, not after requeue_after_s
                for wid, n in heartbeats.reap(ledger, interval_s=self.settings.worker_heartbeat_s):
                    log.warning("worker %s stopped beating; %d item(s) it may have held are sent again", wid, n)
                self.sent += dispatch_due(self.settings, ledger, publish)
                release_uploads(self.settings, ledger)  # API uploads nothing needs any more
            except Exception:  # noqa: BLE001 - the sweep must outlive any one bad round (a locked ledger, ...)
                log.exception("sweep round failed; trying again in %.0f s", self.settings.sweep_interval_s)
            self._stop.wait(self.settings.sweep_interval_s)

    def stop(self) -> None:
        self._stop.set()
