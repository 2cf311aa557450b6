"""The index writer's flush policy: upsert each batch at once, flush once per many points, mark indexed after.

A flush of the embedded store costs 0.1-0.4 s here whatever the number of points (services.index.edge), so
flushing after every 64-point task made the single writer the queue's bottleneck. `DeferredWriter` upserts each
PointBatch without flushing and makes the points durable with one flush

- once `max_points` points wait,
- once the oldest has waited `max_delay_s`,
- once no batch came for `idle_s` (the writer is keeping up: flushing now costs nobody a wait; a timer thread
  sees to these two while no task arrives),
- or at once when the ledger has nothing else in flight (received, queued or processing besides these points):
  the last batch of a burst is not kept waiting for more.
A writer that falls behind is never idle, so it flushes once per `max_points` or `max_delay_s`; one that keeps
up flushes in its idle time, and an item is indexed a fraction of a second after its points were written.

Items are marked `indexed` in the ledger only after the flush that made their points durable. If the process
dies before, nothing is lost: the store's write-ahead log keeps what was upserted if only the process died, the
ledger still says `processing`, and the sweep sends the items again after `requeue_after_s`; point ids are
idempotent, so the second pass finds the points stored and only marks them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from services.governance.tombstones import Tombstones
from services.index import VectorStore
from services.pipeline.batch_jobs import PointBatch, WriteOutcome, stage_points
from services.pipeline.ledger import Ledger

log = logging.getLogger("cxr.writer")


class DeferredWriter:
    """Writes PointBatches into `store` and marks them in `ledger` after the flush that made them durable.

    Thread-safe: the task thread calls `write`, the timer thread `flush`. `close()` flushes what is left.
    """

    def __init__(
        self,
        store: VectorStore,
        ledger: Ledger,
        *,
        max_points: int = 1024,
        max_delay_s: float = 2.0,
        idle_s: float = 0.2,
        timer: bool = True,
        tombstones: Tombstones | None = None,
        on_indexed: Callable[[str, list[str]], None] | None = None,
    ) -> None:
        """`on_indexed(collection, keys)` runs after each flush that made items indexed (the report trigger,
        services.reports.trigger); its errors are logged, never raised: the items are indexed whatever it does."""
        self.store, self.ledger, self.tombstones = store, ledger, tombstones
        self.on_indexed = on_indexed
        self.max_points, self.max_delay_s = max(1, int(max_points)), max(0.0, float(max_delay_s))
        self.idle_s = max(0.0, float(idle_s))
        self._last_write = time.monotonic()
        self._lock = threading.RLock()
        # per collection, (ledger key, point id) pairs upserted and not yet known durable
        self._pending: dict[str, list[tuple[str, str]]] = {}
        self._oldest: float | None = None
        self._retry_at = 0.0  # after a failed flush, the timer waits this long before trying again
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._use_timer = timer
        self.flushes = 0

    @property
    def pending(self) -> int:
        """Points upserted and not yet flushed (their items are still 'processing' in the ledger)."""
        return sum(len(done) for done in self._pending.values())

    def write(self, batch: PointBatch) -> WriteOutcome:
        """Upsert `batch` (refused points fail at once) and flush if due. Transient store errors from the upsert
        propagate with nothing marked; a failed flush is only logged: the points stay pending for the timer."""
        with self._lock:
            out, done = stage_points(self.store, self.ledger, batch, self.tombstones)
            self._last_write = time.monotonic()
            if done:
                self._pending.setdefault(batch.collection, []).extend(done)
                self._oldest = self._oldest or time.monotonic()
            if self._pending and self._due_now():
                self._try_flush()
        self._start_timer()
        return out

    def flush(self) -> int:
        """Flush every collection written to, then mark its items indexed; returns how many were marked.
        StoreError or a ledger error propagates with the items still pending (the next flush marks them)."""
        with self._lock:
            if not self._pending:
                return 0
            for name in sorted(self._pending):
                self.store.flush(name)
            for name, done in self._pending.items():
                self.ledger.mark_indexed(done, collection=name)
            marked, indexed = self.pending, self._pending
            self._pending, self._oldest = {}, None
            self.flushes += 1
            if self.on_indexed is not None:
                for name, done in indexed.items():
                    try:
                        self.on_indexed(name, [key for key, _ in done])
                    except Exception:  # noqa: BLE001 - a report not planned now is not a reason to fail indexing
                        log.exception("after-index hook failed for %d item(s)", len(done))
            return marked

    def close(self) -> None:
        """Stop the timer and flush what is pending (a warm shutdown); errors are logged, not raised: the ledger
        still has the items, and the sweep sends them again."""
        self._stop.set()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.join(timeout=max(1.0, self.max_delay_s))
        with self._lock:
            self._try_flush()

    # -- when to flush

    def _due_now(self) -> bool:
        if self.pending >= self.max_points:
            return True
        if self._oldest is not None and time.monotonic() - self._oldest >= self.max_delay_s:
            return True
        return self.ledger.in_flight(limit=self.pending + 1) <= self.pending

    def _try_flush(self) -> None:
        try:
            self.flush()
        except Exception as exc:  # noqa: BLE001 - kept pending (store or ledger busy); the ledger still has them
            self._retry_at = time.monotonic() + max(self.max_delay_s, 0.5)
            log.warning("flush of %d point(s) postponed: %s", self.pending, exc)

    def _start_timer(self) -> None:
        if not self._use_timer or self._stop.is_set():
            return
        if self._timer is None or not self._timer.is_alive():
            self._timer = threading.Thread(target=self._tick, name="cxr-writer-flush", daemon=True)
            self._timer.start()

    def _tick(self) -> None:
        step = min(0.25, max(0.02, min(self.max_delay_s, self.idle_s) / 4))
        while not self._stop.wait(step):
            with self._lock:
                now = time.monotonic()
                old = self._oldest is not None and now - self._oldest >= self.max_delay_s
                idle = now - self._last_write >= self.idle_s
                if self._pending and (old or idle) and now >= self._retry_at:
                    self._try_flush()
