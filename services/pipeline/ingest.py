"""Ingestion as stages: find files, decode and preprocess, encode batches, upsert; the inline runner (`cxr index`)
of the stages in services.pipeline.stages.

Decoding runs in a thread pool a bounded distance ahead of the encoder, so inference is the bottleneck. A file that
fails at any stage becomes a FileError record (path, stage, reason); the rest of the batch goes on.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.config import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, Settings
from services.errors import StoreError
from services.governance.tombstones import ForgottenError, Tombstones
from services.index import PointRecord, VectorStore
from services.pipeline.refs import RefRecorder, file_ref
from services.pipeline.sources import IngestItem
from services.pipeline.stages import (
    FileError,
    Prepared,
    drop_replaced,
    encode_stage,
    ensure_same_model,
    error_reason,
    plan_existing,
    prepare,
    upsert_stage,
)

if TYPE_CHECKING:  # the encoder comes from the caller; importing it here would load torch
    from services.embedding import BatchEncoder

Progress = Callable[[int], None]
REF_CHUNK = 256  # files whose source refs are recorded in one ledger transaction


@dataclass
class IngestReport:
    """What an ingestion run did. `indexed + skipped + len(failed)` is every file it was given."""

    indexed: int = 0
    skipped: int = 0
    failed: list[FileError] = field(default_factory=list)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=lambda: {"decode": 0.0, "encode": 0.0, "upsert": 0.0})

    @property
    def images_per_s(self) -> float:
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["images_per_s"] = round(self.images_per_s, 2)
        return out


@dataclass(frozen=True)
class IngestOptions:
    """Knobs for one ingestion run (typed, so shells never pass their own namespaces down)."""

    collection: str
    batch_size: int = 32
    decode_workers: int = 2
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = DEFAULT_MIN_SIDE
    skip_existing: bool = True
    update: bool = False  # rewrite the payload of points already stored (and the vector if the content changed)
    # Each encoder batch is upserted at once without a flush (searchable, and kept by the store's write-ahead log
    # if the process dies); a flush (0.1-0.4 s here whatever the size, holding the GIL) makes them durable every
    # `flush_points` points or `flush_s` seconds, and at the end. A power cut loses at most that much, which a
    # rerun indexes (it skips what landed). `indexed` counts only points a flush made durable.
    flush_points: int = 4096
    flush_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> IngestOptions:
        """The options `settings` gives (collection, batch size, decode workers, pixel guard), then `overrides`
        (dataclass fields only: a misspelt one is a TypeError)."""
        base = {
            "collection": settings.collection,
            "batch_size": settings.batch_size,
            "decode_workers": settings.decode_workers,
            "max_pixels": settings.max_pixels,
            "min_side": settings.min_side,
        }
        return cls(**(base | overrides))


def _ahead(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, depth: int) -> Iterator[tuple[object, Future]]:
    """Map fn over items in the pool, keeping at most `depth` in flight, yielding in input order."""
    window: deque[tuple[object, Future]] = deque()
    for item in items:
        window.append((item, pool.submit(fn, item)))
        if len(window) >= depth:
            yield window.popleft()
    while window:
        yield window.popleft()


class Ingestor:
    """Runs find -> decode -> encode -> upsert for one collection with one encoder.

    `refs` (e.g. `Ledger(settings.ledger_path).put_refs`) records each written point's `source_ref -> path`
    before the write, so the file can be found again (thumbnails, `cxr search --explain`); without it the
    payloads carry refs that no one can resolve. `tombstones` refuses what `cxr forget` erased (stage "forgotten").
    """

    def __init__(
        self,
        encoder: BatchEncoder,
        store: VectorStore,
        opts: IngestOptions,
        *,
        salt: bytes,
        refs: RefRecorder | None = None,
        tombstones: Tombstones | None = None,
    ) -> None:
        self.encoder, self.store, self.opts, self.salt, self.refs = encoder, store, opts, salt, refs
        self.tombstones = tombstones
        self._unflushed: list[Prepared] = []  # upserted, waiting for the flush that makes them durable
        self._flushed_at = time.monotonic()

    def run(self, items: Iterable[IngestItem], *, progress: Progress | None = None) -> IngestReport:
        report = IngestReport()
        t0 = time.perf_counter()
        self.store.create_collection(self.opts.collection, self.encoder.dim)
        ensure_same_model(self.store, self.opts.collection, self.encoder.model_id)
        seen: set[str] = set()
        batch: list[Prepared] = []

        def job(item: IngestItem) -> Prepared:
            return prepare(
                item,
                image_size=self.encoder.image_size,
                model_id=self.encoder.model_id,
                salt=self.salt,
                opts=self.opts,
                tombstones=self.tombstones,
            )

        workers = max(1, self.opts.decode_workers)
        with ThreadPoolExecutor(workers, thread_name_prefix="cxr-decode") as pool:
            depth = self.opts.batch_size + 2 * workers if self.opts.decode_workers else 1
            for item, fut in _ahead(pool, job, self._refs_recorded(items, report, progress), depth):
                try:
                    prepared = fut.result()
                except Exception as exc:  # noqa: BLE001 - every failure becomes a per-file record
                    stage = "forgotten" if isinstance(exc, ForgottenError) else "decode"
                    report.failed.append(FileError(str(item.path), stage, error_reason(exc)))
                    _tick(progress)
                    continue
                report.stage_seconds["decode"] += prepared.decode_s
                if prepared.point_id in seen:  # the same image twice in one run
                    report.skipped += 1
                    _tick(progress)
                    continue
                seen.add(prepared.point_id)
                batch.append(prepared)
                if len(batch) >= self.opts.batch_size:
                    self._process(batch, report, progress)
                    batch = []
            if batch:
                self._process(batch, report, progress)
        self._sync(report)
        report.seconds = time.perf_counter() - t0
        return report

    def _process(self, batch: list[Prepared], report: IngestReport, progress: Progress | None) -> None:
        collection = self.opts.collection
        try:
            if self.opts.skip_existing or self.opts.update:
                todo, reuse, skipped = plan_existing(self.store, collection, batch, update=self.opts.update)
            else:
                todo, reuse, skipped = list(batch), [], []
        except StoreError as exc:  # the store could not be read (locked past its wait, server down)
            report.failed.extend(FileError(str(p.item.path), "upsert", error_reason(exc)) for p in batch)
            _tick(progress, len(batch))
            return
        report.skipped += len(skipped)
        t0 = time.perf_counter()
        encoded, bad = encode_stage(self.encoder, todo)
        report.stage_seconds["encode"] += time.perf_counter() - t0
        report.failed.extend(err for _, err in bad)
        records = [(p, PointRecord(p.point_id, v, p.payload)) for p, v in [*encoded, *reuse]]
        if records:
            self._write(records, report)
            due = time.monotonic() - self._flushed_at >= self.opts.flush_s
            if len(self._unflushed) >= self.opts.flush_points or due:
                self._sync(report)
        _tick(progress, len(batch))

    def _write(self, records: list[tuple[Prepared, PointRecord]], report: IngestReport) -> None:
        """Upsert without a flush; refused points fail here, the rest wait for `_sync`."""
        t1 = time.perf_counter()
        try:
            landed, refused = upsert_stage(self.store, self.opts.collection, records, flush=False)
            drop_replaced(self.store, self.opts.collection, landed, flush=False)  # a changed file keeps one point
            self._unflushed.extend(landed)
            report.failed.extend(FileError(str(p.item.path), "upsert", why) for p, why in refused)
        except StoreError as exc:
            report.failed.extend(FileError(str(p.item.path), "upsert", error_reason(exc)) for p, _ in records)
        finally:
            report.stage_seconds["upsert"] += time.perf_counter() - t1

    def _sync(self, report: IngestReport) -> None:
        """Flush: what was upserted since the last flush is durable, and only now counted as indexed."""
        done, self._unflushed = self._unflushed, []
        self._flushed_at = time.monotonic()
        if not done:
            return
        t1 = time.perf_counter()
        try:
            self.store.flush(self.opts.collection)
            report.indexed += len(done)
        except StoreError as exc:  # not known to be durable: a rerun writes them again (same ids)
            report.failed.extend(FileError(str(p.item.path), "upsert", error_reason(exc)) for p in done)
        finally:
            report.stage_seconds["upsert"] += time.perf_counter() - t1

    def _refs_recorded(
        self, items: Iterable[IngestItem], report: IngestReport, progress: Progress | None
    ) -> Iterator[IngestItem]:
        """Yield items once their source refs are recorded, REF_CHUNK files per ledger transaction (one fsync
        per chunk, not per encoder batch), before any of their points can be written. A chunk whose refs cannot
        be recorded fails: a point nobody can trace back to its file is worse than a point not written yet."""
        if self.refs is None:
            yield from items
            return
        chunk: list[IngestItem] = []
        for item in items:
            chunk.append(item)
            if len(chunk) >= REF_CHUNK:
                yield from self._record_refs(chunk, report, progress)
                chunk = []
        if chunk:
            yield from self._record_refs(chunk, report, progress)

    def _record_refs(
        self, chunk: list[IngestItem], report: IngestReport, progress: Progress | None
    ) -> list[IngestItem]:
        assert self.refs is not None
        try:
            self.refs([(i.ref or file_ref(i.path, self.salt), str(Path(i.path).absolute())) for i in chunk])
        except Exception as exc:  # noqa: BLE001 - a locked or broken ledger fails these files, not the run
            why = f"source reference not recorded ({error_reason(exc)})"
            report.failed.extend(FileError(str(i.path), "upsert", why) for i in chunk)
            _tick(progress, len(chunk))
            return []
        return chunk


def _tick(progress: Progress | None, n: int = 1) -> None:
    if progress is not None:
        progress(n)
