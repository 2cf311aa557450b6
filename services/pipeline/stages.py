"""The ingest stages, composed by two runners: the inline `cxr index` run (services.pipeline.ingest.Ingestor) and
the queue's jobs (services.pipeline.batch_jobs: `embed_keys`, `stage_points`, `write_points`).

- `prepare`: read a file once, hash, decode, resize, build its point id and payload (a `Prepared`).
- `split_existing` / `plan_existing`: what the store already holds, unchanged, is skipped unless in update mode.
- `drop_replaced`: a file changed in place keeps one point: the one written for its new content.
- `encode_stage`: one model call per batch; a batch that breaks the encoder is encoded image by image.
- `upsert_stage`: upsert, refusing only the points the store refuses.

A file that fails at a stage becomes a `FileError` (path, stage, reason); `error_reason` words the reason.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np

from services.errors import CxrError, DecodeError, StoreError, StoreLockedError, StoreUnavailableError
from services.imaging import decode_bytes, max_file_bytes, read_regular_file, to_model_input
from services.index import PointRecord, VectorStore
from services.index.payload import build_payload, point_id
from services.index.store import SearchFilter, as_matrix
from services.pipeline.refs import file_ref
from services.pipeline.sources import IngestItem

if TYPE_CHECKING:  # the encoder comes from the caller; importing it here would load torch
    from services.embedding import BatchEncoder
    from services.governance.tombstones import Tombstones
    from services.pipeline.ingest import IngestOptions

T = TypeVar("T")

# Errors after which nothing was refused, only delayed: the queue retries them; the inline run reports them.
TRANSIENT_STORE_ERRORS: tuple[type[StoreError], ...] = (StoreLockedError, StoreUnavailableError)


@dataclass(frozen=True)
class FileError:
    """One file that did not land, and why."""

    path: str
    stage: str  # "find" | "decode" | "encode" | "upsert"
    reason: str


@dataclass(frozen=True)
class Prepared:
    """A decoded, model-sized image with its point id and payload, ready for the encoder."""

    item: IngestItem
    pixels: np.ndarray
    point_id: str
    payload: dict
    decode_s: float


def error_reason(exc: BaseException) -> str:
    """The one-line reason a file failed: a domain error's own words, else the exception's type and message."""
    if isinstance(exc, DecodeError):
        return exc.reason
    if isinstance(exc, CxrError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


def prepare(
    item: IngestItem,
    *,
    image_size: int,
    model_id: str | None,
    salt: bytes,
    opts: IngestOptions,
    tombstones: Tombstones | None = None,
) -> Prepared:
    """Decode stage: read the file once, hash it, decode, resize, and build its payload. ForgottenError when the
    payload belongs to a patient, study or instance `cxr forget` erased (`tombstones`). The decode is reduced to
    what an `image_size` model input needs (services.imaging.reduce), which gives the same input as a full one."""
    t0 = time.perf_counter()
    data = read_regular_file(item.path, max_file_bytes(opts.max_pixels))  # never blocks on a FIFO
    decoded = decode_bytes(
        data, str(item.path), max_pixels=opts.max_pixels, min_side=opts.min_side, target_side=image_size
    )
    sha = hashlib.sha256(data).hexdigest()
    payload = build_payload(
        label=item.label,
        source_ref=item.ref or file_ref(item.path, salt),  # never the path: folders are named after patients
        model_id=model_id,
        salt=salt,
        meta=decoded.meta,
        row=item.row,
        content_sha256=sha,
    )
    if tombstones is not None:
        tombstones.check_payload(payload, item.path)
    pid = point_id(sop_uid=decoded.meta.sop_uid, content_sha256=sha)
    pixels = to_model_input(decoded.pixels, image_size, extent=decoded.extent)
    return Prepared(item, pixels, pid, payload, time.perf_counter() - t0)


def ensure_same_model(store: VectorStore, collection: str, model_id: str | None) -> None:
    """Refuse to mix vectors of two models in one collection: their similarities are meaningless together."""
    first = next(iter(store.scroll(collection, batch=1)), None)
    have = first.payload.get("model_id") if first else None
    if have and model_id and have != model_id:
        raise StoreError(
            f"collection {collection!r} holds vectors of model {have}, not {model_id}",
            "Index into a new --collection, or search with the model the collection was built with.",
        )


class _Point(Protocol):
    point_id: str
    payload: dict


P = TypeVar("P", bound=_Point)


def split_existing(
    store: VectorStore, collection: str, batch: Sequence[P], *, update: Callable[[P], bool]
) -> tuple[list[P], list[P]]:
    """Split a batch into (to write, skipped): a point the store already holds with the same content is skipped
    unless its item is in update mode. A stored point whose content changed (a file rewritten in place, a DICOM
    instance under the same SOP Instance UID with other bytes) is written again. Only the points not in update
    mode are looked up (none: no call to the store)."""
    plain = [p.point_id for p in batch if not update(p)]
    stored = {r.id: r.payload.get("content_sha256") for r in store.retrieve(collection, plain)} if plain else {}

    def same(p: P) -> bool:
        return p.point_id in stored and stored[p.point_id] == p.payload.get("content_sha256")

    todo = [p for p in batch if update(p) or not same(p)]
    skipped = [p for p in batch if not update(p) and same(p)]
    return todo, skipped


def drop_replaced(store: VectorStore, collection: str, written: Sequence[P], *, flush: bool = True) -> int:
    """One point per source: delete the points that carry the `source_ref` of a point just written under another
    id (the file changed in place, so its content hash, and with it its point id, changed). Returns how many.
    Two files with the same bytes share one point (it carries the first one's ref), so a changed first file
    takes that point with it; the unchanged copy comes back when it is indexed again."""
    new_id = {p.payload["source_ref"]: p.point_id for p in written if p.payload.get("source_ref")}
    if not new_id:
        return 0
    flt = SearchFilter(must={"source_ref": sorted(new_id)})
    stale = [r.id for r in store.scroll(collection, flt=flt) if new_id.get(r.payload.get("source_ref")) != r.id]
    if stale:
        store.delete_points(collection, stale, flush=flush)
    return len(stale)


def plan_existing(
    store: VectorStore, collection: str, batch: Sequence[Prepared], *, update: bool
) -> tuple[list[Prepared], list[tuple[Prepared, np.ndarray]], list[Prepared]]:
    """Split a batch by what the store already holds: (to encode, (prepared, stored vector) to rewrite with the
    new payload, skipped). Without `update` a stored point is skipped; with it, its payload is rewritten and its
    vector kept when the content hash is unchanged, re-encoded when the content changed."""
    write, skipped = split_existing(store, collection, batch, update=lambda _: update)
    if not update:
        return write, [], skipped
    # in update mode every point is written: the stored vector is kept where the content did not change
    ids = [p.point_id for p in write]
    stored = {r.id: r for r in store.retrieve(collection, ids, with_vectors=True)} if ids else {}  # the stored ones
    todo: list[Prepared] = []
    reuse: list[tuple[Prepared, np.ndarray]] = []
    for p in write:
        old = stored.get(p.point_id)
        same = old is not None and old.vector is not None
        if same and old.payload.get("content_sha256") == p.payload.get("content_sha256"):
            reuse.append((p, old.vector))
        else:
            todo.append(p)
    return todo, reuse, skipped


def encode_stage(
    encoder: BatchEncoder, batch: Sequence[Prepared]
) -> tuple[list[tuple[Prepared, np.ndarray]], list[tuple[Prepared, FileError]]]:
    """Encode a batch in one model call: ((prepared, vector) pairs, (prepared, FileError) pairs). If the batch
    call fails, each image is encoded alone, so only the image that breaks the encoder fails."""
    if not batch:
        return [], []
    try:
        vectors = encoder.encode(np.stack([p.pixels for p in batch]))
        return list(zip(batch, vectors, strict=True)), []
    except Exception as exc:  # noqa: BLE001 - every failure becomes a per-file record
        if len(batch) == 1:
            return [], [(batch[0], FileError(str(batch[0].item.path), "encode", error_reason(exc)))]
    ok: list[tuple[Prepared, np.ndarray]] = []
    bad: list[tuple[Prepared, FileError]] = []
    for p in batch:
        good, err = encode_stage(encoder, [p])
        ok.extend(good)
        bad.extend(err)
    return ok, bad


def upsert_stage(
    store: VectorStore, collection: str, records: Sequence[tuple[T, PointRecord]], *, flush: bool = True
) -> tuple[list[T], list[tuple[T, str]]]:
    """Upsert (tag, point) pairs: (tags that landed, (tag, reason) refused). A vector the store would refuse (NaN,
    infinity, all zeros) is refused alone before the call; if the store still refuses the batch, it is split in
    halves until only the bad points fail. One flush at the end (none with `flush=False`: the caller flushes
    later and counts the points durable only then). Transient errors (TRANSIENT_STORE_ERRORS) propagate: they
    refuse nothing, the caller retries or reports them."""
    good: list[tuple[T, PointRecord]] = []
    refused: list[tuple[T, str]] = []
    for tag, rec in records:
        try:
            if rec.vector is not None:  # the store's own check, on this vector alone
                as_matrix(collection, np.asarray(rec.vector), int(np.size(rec.vector)))
            good.append((tag, rec))
        except StoreError as exc:
            refused.append((tag, error_reason(exc)))
    landed, bad = _upsert_halving(store, collection, good)
    if flush and landed:
        store.flush(collection)
    return landed, refused + bad


def _upsert_halving(
    store: VectorStore, collection: str, records: Sequence[tuple[T, PointRecord]]
) -> tuple[list[T], list[tuple[T, str]]]:
    if not records:
        return [], []
    try:
        store.upsert(collection, [r for _, r in records], flush=False)
        return [t for t, _ in records], []
    except TRANSIENT_STORE_ERRORS:
        raise
    except StoreError as exc:
        if len(records) == 1:
            return [], [(records[0][0], error_reason(exc))]
    half = len(records) // 2
    left, right = _upsert_halving(store, collection, records[:half]), _upsert_halving(store, collection, records[half:])
    return left[0] + right[0], left[1] + right[1]
