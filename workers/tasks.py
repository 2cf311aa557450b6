"""Thin Celery tasks over services.pipeline.batch_jobs: ledger keys and JSON in, nothing pickled.

- `cxr.embed(keys)` (queue `embed`, N processes): claim, decode, encode the batch. With the embedded store it
  sends the points to `cxr.index` (queue `index`, one process: the single writer); with a Qdrant server
  (`CXR_QDRANT_URL`) it upserts itself.
- `cxr.index(batch)`: upsert (no flush), refresh the HNSW index when enough points are unindexed; the process's
  DeferredWriter (services.pipeline.index_writer) flushes once per `index_flush_points` points or
  `index_flush_s` seconds, or when nothing else is in flight, and only then marks the items indexed. The pool
  process flushes what is left when it shuts down; if it is killed first, the items stay 'processing' and the
  sweep sends them again (nothing lost, nothing duplicated). After each flush the writer plans the reports of
  the received and pulled films it made searchable (services.reports.trigger) and publishes them.
- `cxr.report(collection, key)` (queue `report`, consumed by the index writer's process, where the embedded store
  is open): build and send one film's similar-cases report (services.reports.delivery); a destination that is
  down is tried again after a backoff, the ledger's report row counting the attempts.

Transient errors (store locked or unreachable) are retried with exponential backoff, `settings.task_retries` times;
then the items go back to 'received' with the reason and the sweep sends them again, until the ledger's attempt
counter (`settings.max_attempts`) marks them failed. Permanent errors (a corrupt file) fail at once, per file.
The model loads in the pool process on its first task, never in the parent, with one torch thread unless
`CXR_TORCH_THREADS` says otherwise.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from functools import cached_property
from typing import TYPE_CHECKING, Any

from services.config import Settings
from services.governance.metrics import EMBED_SECONDS, INDEX_SECONDS
from services.governance.tombstones import tombstones_at
from workers.queues import EMBED_TASK, INDEX_QUEUE, INDEX_TASK, REPORT_TASK

if TYPE_CHECKING:
    from celery import Celery, Task

    from services.pipeline.index_writer import DeferredWriter
    from services.pipeline.ledger import Ledger
    from services.pipeline.report_ledger import ReportLedger
    from services.pipeline.runtime import Runtime

log = logging.getLogger("cxr.tasks")
MAX_BACKOFF_S = 60.0


class WorkerContext:
    """What one worker process keeps between tasks: the ledger, and the model and store opened on first use."""

    def __init__(self, settings: Settings) -> None:
        from services.pipeline.ledger import Ledger
        from services.pipeline.runtime import Runtime

        threads = settings.torch_threads or 1  # several processes share the cores
        self.settings = settings.model_copy(update={"torch_threads": threads})
        self.ledger: Ledger = Ledger(settings.ledger_path)
        self.runtime: Runtime = Runtime(self.settings)
        self.pid = os.getpid()
        self._writer: DeferredWriter | None = None
        self.tombstones = tombstones_at(self.settings.ledger_path, self.settings.salt)
        self.app: Celery | None = None  # set by `context`: the after-index hook publishes report tasks with it

    @property
    def writer(self) -> DeferredWriter:
        """The index writer's deferred flusher (this process is the single writer of the embedded store)."""
        if self._writer is None:
            from services.pipeline.index_writer import DeferredWriter

            s = self.settings
            self._writer = DeferredWriter(
                self.runtime.store,
                self.ledger,
                max_points=s.index_flush_points,
                max_delay_s=s.index_flush_s,
                tombstones=self.tombstones,
                on_indexed=self.after_indexed,
            )
        return self._writer

    def after_indexed(self, collection: str, keys: list[str]) -> None:
        """Films just made searchable: plan their reports and hand them to the report queue (when a
        destination is configured; services.reports.trigger)."""
        if not self.settings.report_destination or self.app is None:
            return
        from services.reports.trigger import dispatch_due_reports, plan_reports
        from workers.dispatch import report_publish

        if plan_reports(self.settings, self.ledger, self.reports, collection, keys):
            dispatch_due_reports(self.settings, self.reports, report_publish(self.app))

    @cached_property
    def reports(self) -> ReportLedger:
        """The ledger's reports (services.pipeline.report_ledger), opened on first use."""
        from services.pipeline.report_ledger import ReportLedger

        return ReportLedger(self.settings.ledger_path)

    def close(self) -> None:
        """Flush what the writer holds and close the store (a pool process shutting down)."""
        if self._writer is not None:
            self._writer.close()
        self.runtime.close()


_contexts: dict[int, WorkerContext] = {}


def context(app: Celery) -> WorkerContext:
    """This process's context (a forked child never reuses its parent's)."""
    ctx = _contexts.get(os.getpid())
    if ctx is None:
        ctx = _contexts[os.getpid()] = WorkerContext(app.cxr_settings)  # type: ignore[attr-defined]
        ctx.app = app
    return ctx


def _backoff(task: Task, settings: Settings) -> float:
    return min(MAX_BACKOFF_S, settings.retry_backoff_s * 2**task.request.retries)


def _retry_or_release(
    task: Task, ctx: WorkerContext, keys: list[str], stage: str, exc: Exception, *, collection: str | None
) -> None:
    """Retry a transient failure with backoff; past `task_retries`, hand the items back to the sweep (state
    'received', reason kept), where the ledger's attempt counter bounds them."""
    if task.request.retries < ctx.settings.task_retries:
        log.warning("transient %s error on %d item(s), retrying: %s", stage, len(keys), exc)
        raise task.retry(exc=exc, countdown=_backoff(task, ctx.settings), max_retries=ctx.settings.task_retries)
    log.warning("transient %s error on %d item(s), retries used up; back to the sweep: %s", stage, len(keys), exc)
    for key in keys:
        ctx.ledger.mark_failed(key, stage, f"{type(exc).__name__}: {exc}", permanent=False, collection=collection)


def _opts(settings: Settings) -> Any:
    from services.pipeline.ingest import IngestOptions

    return IngestOptions.from_settings(settings)


def embed(task: Task, keys: list[str], collection: str | None = None) -> dict[str, int]:
    """Embed one batch of ledger keys of `collection` (None in messages sent before items were per collection);
    see the module docstring."""
    from services.errors import CxrError
    from services.pipeline.batch_jobs import embed_keys, write_points
    from services.pipeline.stages import TRANSIENT_STORE_ERRORS
    from workers.queues import broker_errors

    ctx = context(task.app)
    settings = ctx.settings
    try:
        encoder = ctx.runtime.encoder
    except CxrError as exc:  # no checkpoint, or an unreadable one: nothing to do but report and let the sweep retry
        log.error("cannot load the model: %s", exc)
        _retry_or_release(task, ctx, keys, "encode", exc, collection=collection)
        return {"indexed": 0}
    with EMBED_SECONDS.time():
        out = embed_keys(
            ctx.ledger,
            encoder,
            keys,
            opts=_opts(settings),
            salt=settings.salt,
            max_attempts=settings.max_attempts,
            collection=collection,
        )
    stats = {"embedded": sum(len(b.points) for b in out.batches), "failed": out.failed, "gave_up": out.gave_up}
    for batch in out.batches:
        if settings.qdrant_url:  # a server takes writes from every worker
            try:
                write_points(ctx.runtime.store, ctx.ledger, batch, ctx.tombstones)
            except (*TRANSIENT_STORE_ERRORS, sqlite3.OperationalError) as exc:  # store or ledger busy past its wait
                _retry_or_release(task, ctx, [p.key for p in batch.points], "upsert", exc, collection=batch.collection)
            else:
                try:
                    ctx.after_indexed(batch.collection, [p.key for p in batch.points])
                except Exception:  # noqa: BLE001 - indexed all the same; the report is planned by no one else
                    log.exception("planning the reports of %d film(s) failed", len(batch.points))
        else:
            try:
                task.app.send_task(INDEX_TASK, args=[batch.to_json()], queue=INDEX_QUEUE)
            except broker_errors() as exc:  # Redis went away mid-task: the sweep sends these again once it is back
                log.warning("cannot hand %d point(s) to the index writer: %s", len(batch.points), exc)
                for p in batch.points:
                    why = f"broker unavailable: {exc}"
                    ctx.ledger.mark_failed(p.key, "upsert", why, permanent=False, collection=batch.collection)
    return stats


def index(task: Task, batch: dict[str, Any]) -> dict[str, int]:
    """The single writer of the embedded store: upsert, refresh the index when due; items are marked indexed
    after the deferred flush that makes them durable (see the module docstring)."""
    from services.pipeline.batch_jobs import PointBatch, refresh_if_due
    from services.pipeline.stages import TRANSIENT_STORE_ERRORS

    ctx = context(task.app)
    points = PointBatch.from_json(batch)
    store = ctx.runtime.store
    try:
        with INDEX_SECONDS.time():
            out = ctx.writer.write(points)
    except (*TRANSIENT_STORE_ERRORS, sqlite3.OperationalError) as exc:  # store or ledger busy past its wait
        _retry_or_release(task, ctx, [p.key for p in points.points], "upsert", exc, collection=points.collection)
        return {"indexed": 0}
    try:
        refresh_if_due(store, points.collection, getattr(ctx.settings, "index_threshold_points", None))
    except TRANSIENT_STORE_ERRORS as exc:  # the points landed; the next batch refreshes instead
        log.warning("index refresh postponed: %s", exc)
    return {"indexed": out.indexed, "skipped": out.skipped, "refused": out.refused}


def report(task: Task, collection: str, key: str) -> dict[str, str]:
    """Build and send the report of one indexed film (services.reports.delivery); runs in the index writer's
    process, where the embedded store is open. A destination that fails is tried again after a backoff."""
    from services.reports.delivery import deliver

    ctx = context(task.app)
    outcome = deliver(ctx.settings, ctx.runtime, ctx.reports, collection, key)
    if outcome.retry_in is not None:
        # a fresh message after the backoff (no retry budget here: the ledger's attempt count bounds it)
        raise task.retry(countdown=outcome.retry_in, max_retries=None)
    return {"state": outcome.state}


def _on_process_shutdown(**_kwargs: Any) -> None:
    # Runs in the pool process as it exits (warm shutdown, max tasks): flush what the index writer holds.
    ctx = _contexts.pop(os.getpid(), None)
    if ctx is not None:
        try:
            ctx.close()
        except Exception:  # noqa: BLE001 - the ledger still has the items; the sweep sends them again
            log.exception("closing the worker context failed")


def register(app: Celery) -> None:
    """Register the cxr tasks on `app` (bound, late-acknowledged; no automatic retries besides ours)."""
    from celery.signals import worker_process_shutdown

    app.task(name=EMBED_TASK, bind=True, acks_late=True, max_retries=None)(embed)
    app.task(name=INDEX_TASK, bind=True, acks_late=True, max_retries=None)(index)
    app.task(name=REPORT_TASK, bind=True, acks_late=True, max_retries=None)(report)
    worker_process_shutdown.connect(_on_process_shutdown, weak=False, dispatch_uid="cxr-flush-on-shutdown")
