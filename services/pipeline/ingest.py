"""Ingestion as stages: find files, decode and preprocess, encode batches, upsert.

Decoding runs in a thread pool a bounded distance ahead of the encoder, so inference is the bottleneck. A file that
fails at any stage becomes a FileError record (path, stage, reason); the rest of the batch goes on.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from services.embedding import BatchEncoder
from services.errors import CxrError, DecodeError, StoreError
from services.imaging import decode_bytes, max_file_bytes, read_regular_file, to_model_input
from services.index import PointRecord, VectorStore
from services.index.payload import build_payload, point_id
from services.pipeline.sources import IngestItem

Progress = Callable[[int], None]


@dataclass(frozen=True)
class FileError:
    """One file that did not land, and why."""

    path: str
    stage: str  # "find" | "decode" | "encode" | "upsert"
    reason: str


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
    max_pixels: int = 80_000_000
    min_side: int = 32
    skip_existing: bool = True


@dataclass(frozen=True)
class Prepared:
    """A decoded, model-sized image with its point id and payload, ready for the encoder."""

    item: IngestItem
    pixels: np.ndarray
    point_id: str
    payload: dict
    decode_s: float


def prepare(item: IngestItem, *, image_size: int, model_id: str | None, salt: bytes, opts: IngestOptions) -> Prepared:
    """Decode stage: read the file once, hash it, decode, resize, and build its payload."""
    t0 = time.perf_counter()
    data = read_regular_file(item.path, max_file_bytes(opts.max_pixels))  # never blocks on a FIFO
    decoded = decode_bytes(data, str(item.path), max_pixels=opts.max_pixels, min_side=opts.min_side)
    sha = hashlib.sha256(data).hexdigest()
    payload = build_payload(
        label=item.label,
        source_uri=item.source_uri,
        model_id=model_id,
        salt=salt,
        meta=decoded.meta,
        row=item.row,
        content_sha256=sha,
    )
    pid = point_id(sop_uid=decoded.meta.sop_uid, content_sha256=sha)
    pixels = to_model_input(decoded.pixels, image_size)
    return Prepared(item, pixels, pid, payload, time.perf_counter() - t0)


def _ahead(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, depth: int) -> Iterator[tuple[object, Future]]:
    """Map fn over items in the pool, keeping at most `depth` in flight, yielding in input order."""
    window: deque[tuple[object, Future]] = deque()
    for item in items:
        window.append((item, pool.submit(fn, item)))
        if len(window) >= depth:
            yield window.popleft()
    while window:
        yield window.popleft()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, DecodeError):
        return exc.reason
    if isinstance(exc, CxrError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


class Ingestor:
    """Runs find -> decode -> encode -> upsert for one collection with one encoder."""

    def __init__(self, encoder: BatchEncoder, store: VectorStore, opts: IngestOptions, *, salt: bytes) -> None:
        self.encoder, self.store, self.opts, self.salt = encoder, store, opts, salt

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
            )

        workers = max(1, self.opts.decode_workers)
        with ThreadPoolExecutor(workers, thread_name_prefix="cxr-decode") as pool:
            depth = self.opts.batch_size + 2 * workers if self.opts.decode_workers else 1
            for item, fut in _ahead(pool, job, items, depth):
                try:
                    prepared = fut.result()
                except Exception as exc:  # noqa: BLE001 - every failure becomes a per-file record
                    report.failed.append(FileError(str(item.path), "decode", _reason(exc)))
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
                    self._flush(batch, report, progress)
                    batch = []
            if batch:
                self._flush(batch, report, progress)
        report.seconds = time.perf_counter() - t0
        return report

    def _flush(self, batch: list[Prepared], report: IngestReport, progress: Progress | None) -> None:
        todo = batch
        if self.opts.skip_existing:
            present = self.store.existing_ids(self.opts.collection, [p.point_id for p in batch])
            todo = [p for p in batch if p.point_id not in present]
            report.skipped += len(batch) - len(todo)
        if todo:
            self._encode_and_upsert(todo, report)
        _tick(progress, len(batch))

    def _encode_and_upsert(self, todo: list[Prepared], report: IngestReport) -> None:
        t0 = time.perf_counter()
        try:
            vectors = self.encoder.encode(np.stack([p.pixels for p in todo]))
        except Exception as exc:  # noqa: BLE001
            report.failed.extend(FileError(str(p.item.path), "encode", _reason(exc)) for p in todo)
            return
        finally:
            report.stage_seconds["encode"] += time.perf_counter() - t0
        t1 = time.perf_counter()
        points = [PointRecord(p.point_id, v, p.payload) for p, v in zip(todo, vectors, strict=True)]
        try:
            self.store.upsert(self.opts.collection, points)
            report.indexed += len(points)
        except StoreError as exc:
            report.failed.extend(FileError(str(p.item.path), "upsert", _reason(exc)) for p in todo)
        finally:
            report.stage_seconds["upsert"] += time.perf_counter() - t1


def _tick(progress: Progress | None, n: int = 1) -> None:
    if progress is not None:
        progress(n)


def ensure_same_model(store: VectorStore, collection: str, model_id: str | None) -> None:
    """Refuse to mix vectors of two models in one collection: their similarities are meaningless together."""
    first = next(iter(store.scroll(collection, batch=1)), None)
    have = first.payload.get("model_id") if first else None
    if have and model_id and have != model_id:
        raise StoreError(
            f"collection {collection!r} holds vectors of model {have}, not {model_id}",
            "Index into a new --collection, or search with the model the collection was built with.",
        )
