"""The embedded store: Qdrant's engine in process (qdrant-edge-py 0.9.0), one EdgeShard per collection.

Layout: ROOT/<collection>/ is the shard directory; ROOT/<collection>/cxr-collection.json records the vector
size and is written last, so a collection exists exactly when that file does. Only one process may open a
shard (its write-ahead log is locked); a second opener gets StoreLockedError.

Durability, as measured on 0.9.0 (strace, and SIGKILL between upsert and flush, then reopen):
- `update()` appends to the write-ahead log, an mmap'd file, and returns with no msync or fsync. A process killed
  right after it loses nothing: the dirty pages belong to the kernel, and `load()` replays the log (5,000 points
  upserted, never flushed, SIGKILLed: all 5,000 back). A power cut or kernel crash before the next flush may
  lose them.
- `flush()` msyncs the log and every segment file and fsyncs them: about 135 sync calls with the payload
  indexes, 0.1-0.4 s here whatever the number of points, even when nothing changed, and it holds the GIL all
  along. `close()` flushes again.
So `upsert(..., flush=False)` plus one `flush(name)` per many points is what a busy writer wants; whoever marks
work done elsewhere (the ledger) marks it only after the flush that made it durable.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from services.errors import CollectionNotFoundError, StoreError, StoreLockedError
from services.index.edge_params import edge_config, edge_optimizers, index_fields
from services.index.edge_shards import LeasedShards
from services.index.grouping import collect_groups
from services.index.store import (
    INDEXED_FIELDS,
    CollectionInfo,
    Hit,
    PointRecord,
    SearchFilter,
    as_vector,
    check_batch,
    check_dim,
    check_facet_key,
    check_group_field,
    check_ids,
    check_k,
    check_name,
    check_points,
    check_same_dim,
    example_vectors,
    excluding,
    restore_ids,
)
from services.index.translate import engine_filter, engine_search_params, found_ids, hits, in_order, scroll_records
from services.index.tuning import IndexTuning

META_FILE = "cxr-collection.json"


def _edge_filter(flt: SearchFilter | None) -> qe.Filter | None:
    """SearchFilter -> qdrant-edge Filter (look-alike classes of qdrant-client's; they do not mix)."""
    return engine_filter(flt, qe, lambda ids: qe.HasIdCondition(set(ids)))


class QdrantEdgeStore(LeasedShards):
    """VectorStore on qdrant-edge shards under `root`. Shards open lazily; an upsert flushes unless told not to
    (`flush=False`, then `flush(name)` makes it durable; see the module docstring).

    Several processes share one store by taking turns (services.index.lease, .edge_shards): a store object holds it
    while it works, keeps its shards open for `linger_s` after its last call unless another process is waiting,
    then closes them. A process that waits longer than `wait_s` gets StoreLockedError. `linger_s=0` closes
    after every call.

    `indexing_threshold_kb` sets the engine's optimizer threshold for new or reopened shards: segments smaller
    than this stay unindexed (exact search). None keeps the engine default. `tuning` (services.index.tuning)
    sets the threshold and segment size in points, the HNSW graph of new collections and the search defaults;
    give the threshold one way or the other, not both.
    """

    def __init__(
        self,
        root: Path,
        *,
        indexing_threshold_kb: int | None = None,
        wait_s: float = 30.0,
        linger_s: float = 2.0,
        tuning: IndexTuning | None = None,
    ) -> None:
        self.tuning = tuning or IndexTuning()
        if indexing_threshold_kb is not None and self.tuning.threshold_points is not None:
            raise StoreError("give the embedded store an indexing threshold in KB or in points (tuning), not both")
        super().__init__(root, wait_s=wait_s, linger_s=linger_s)
        self._threshold = indexing_threshold_kb
        self._pending: dict[str, int] = {}  # points upserted since this object's last optimize(), per collection
        self._dims: dict[str, int] = {}
        self._indexed: set[str] = set()  # collections whose INDEXED_FIELDS indexes are known to exist

    def __enter__(self) -> QdrantEdgeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- shards

    def _dir(self, name: str) -> Path:
        return self.root / check_name(name)

    def _config(self, dim: int | None, *, creating: bool = False) -> qe.EdgeConfig:
        return edge_config(self.tuning, dim, self._threshold, creating=creating)

    def _load(self, path: Path, dim: int | None) -> qe.EdgeShard:
        # With a threshold, reopen with it so it also applies to shards created before; the engine needs the
        # vector params in any config it is given, and checks them against the shard.
        reconfigure = dim is not None and edge_optimizers(self.tuning, dim, self._threshold) is not None
        config = self._config(dim) if reconfigure else None
        try:
            return qe.EdgeShard.load(str(path), config)
        except Exception as exc:
            raise self._engine_error(exc, path, "open") from exc

    def _dim(self, name: str) -> int:
        if name in self._dims:
            return self._dims[name]
        meta = self._dir(name) / META_FILE
        try:
            dim = int(json.loads(meta.read_text())["dim"])
        except FileNotFoundError:
            raise CollectionNotFoundError(f"no collection {name!r} in the embedded store {self.root}") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"unreadable collection record {meta}: {exc}") from exc
        self._dims[name] = dim
        return dim

    def _shard(self, name: str) -> qe.EdgeShard:
        """The open shard for `name`, opening (and locking) it on first use."""
        with self._lock:
            shard = self._shards.get(name)
            if shard is None:
                dim = self._dim(name)  # CollectionNotFoundError before touching the engine
                self._lease.acquire()
                shard = self._shards[name] = self._load(self._dir(name), dim)
            return shard

    def _call(self, name: str, doing: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"{doing} failed in collection {name!r} ({self._dir(name)}): {exc}") from exc

    # -- collections

    def create_collection(self, name: str, dim: int) -> None:
        path, dim = self._dir(name), check_dim(dim)
        with self._lock:
            if self.has_collection(name):
                check_same_dim(name, self._dim(name), dim)
                self._ensure_indexes(name)
                return
            with self._leased():  # a failed create gives the lease back
                shard = self._create(path, dim)
            self._shards[name], self._dims[name] = shard, dim
            self._last_used = time.monotonic()
            self._after_call()

    def _create(self, path: Path, dim: int) -> qe.EdgeShard:
        """A new shard at `path` with the payload indexes; its collection record is written last."""
        if path.exists():  # an interrupted create: never visible as a collection
            self._clear_partial(path)
        path.mkdir(parents=True)
        try:
            shard = qe.EdgeShard.create(str(path), self._config(dim, creating=True))
            index_fields(shard, INDEXED_FIELDS)
        except Exception as exc:
            raise self._engine_error(exc, path, "create") from exc
        record = {"dim": dim, "distance": "Cosine", "created_at": datetime.now(UTC).isoformat()}
        tmp = path / (META_FILE + ".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path / META_FILE)
        return shard

    def _ensure_indexes(self, name: str) -> None:
        """Give a collection made by an older cxr the payload indexes added since (once per store object)."""
        if name not in self._indexed:
            with self._using(name) as shard:
                have = set(self._call(name, "info", shard.info).payload_schema)
                index_fields(shard, {k: v for k, v in INDEXED_FIELDS.items() if k not in have})
            self._indexed.add(name)

    def _clear_partial(self, path: Path) -> None:
        try:  # take its lock first, so a create in progress elsewhere is not wiped
            self._load(path, None).close()
        except StoreLockedError:
            raise
        except StoreError:
            pass  # not even a loadable shard yet
        shutil.rmtree(path)

    def has_collection(self, name: str) -> bool:
        return (self._dir(name) / META_FILE).is_file()

    def collections(self) -> list[CollectionInfo]:
        if not self.root.is_dir():
            return []
        names = sorted(p.parent.name for p in self.root.glob(f"*/{META_FILE}"))
        return [CollectionInfo(n, self._dim(n), self.count(n)) for n in names]

    def delete_collection(self, name: str) -> None:
        path = self._dir(name)
        with self._lock:
            shard = self._shard(name)  # holds the lease, so another process's open shard is never deleted
            shard.close()
            self._shards.pop(name, None)
            self._dims.pop(name, None)
            self._dirty.discard(name)
            self._indexed.discard(name)
            (path / META_FILE).unlink()
            shutil.rmtree(path)
            self._after_call()

    # -- points

    def upsert(self, name: str, points: Sequence[PointRecord], *, flush: bool = True) -> None:
        """Insert or replace points by id. With `flush=False` they are searchable and survive a killed process
        (the write-ahead log), but not a power cut until `flush(name)`."""
        ids, matrix = check_points(name, points, self._dim(name))
        if not ids:
            return
        batch = [qe.Point(pid, row, dict(p.payload)) for pid, row, p in zip(ids, matrix, points, strict=True)]
        with self._using(name) as shard:
            self._dirty.add(name)
            self._call(name, "upsert", shard.update, qe.UpdateOperation.upsert_points(batch))
            self._pending[name] = self._pending.get(name, 0) + len(batch)
            if flush:
                self._flush_open(name, shard)

    def _flush_open(self, name: str, shard: qe.EdgeShard) -> None:
        self._call(name, "flush", shard.flush)
        self._dirty.discard(name)

    def flush(self, name: str) -> None:
        """Make every point upserted into `name` so far durable. Free when nothing was written since the last
        flush, including the flush of a hand-over to another process (which may already have done it)."""
        with self._lock:
            if name not in self._dirty:
                return
            with self._using(name) as shard:  # reopens only if a hand-over's flush failed
                self._flush_open(name, shard)

    def delete_points(self, name: str, ids: Sequence[str], *, flush: bool = True) -> None:
        canon = check_ids(ids)
        if not canon:
            return
        with self._using(name) as shard:
            self._dirty.add(name)
            self._call(name, "delete", shard.update, qe.UpdateOperation.delete_points(canon))
            if flush:
                self._flush_open(name, shard)

    def existing_ids(self, name: str, ids: Sequence[str]) -> set[str]:
        canon = check_ids(ids)
        with self._using(name) as shard:
            found = found_ids(canon, lambda chunk: self._call(name, "retrieve", shard.retrieve, chunk, False, False))
        return restore_ids(ids, found)

    def _query(
        self, name: str, shard: Any, query: Any, k: int, flt: SearchFilter | None, ef: int | None
    ) -> qe.QueryRequest:
        """A request for `query`, searched as IndexTuning.search_plan says (exact, or the beam and ACORN). Where the
        plan depends on how many points `flt` keeps, the engine's estimate is asked for (one payload-index lookup)."""
        engine_flt = _edge_filter(flt)
        matches = None
        if self.tuning.needs_matches(flt):
            matches = int(self._call(name, "count", shard.count, qe.CountRequest(filter=engine_flt, exact=False)))
        params = engine_search_params(self.tuning.search_plan(flt, matches, ef), qe)
        return qe.QueryRequest(limit=k, query=query, filter=engine_flt, with_payload=True, params=params)

    def search(
        self,
        name: str,
        vector: np.ndarray,
        k: int,
        flt: SearchFilter | None = None,
        *,
        hnsw_ef: int | None = None,
    ) -> list[Hit]:
        return self._page(name, qe.Query.Nearest(as_vector(name, vector, self._dim(name))), flt, check_k(k), hnsw_ef)

    def search_batch(
        self,
        name: str,
        vectors: np.ndarray,
        k: int,
        filters: Sequence[SearchFilter | None] | None = None,
    ) -> list[list[Hit]]:
        matrix, k, flts = check_batch(name, vectors, self._dim(name), k, filters)
        if not len(matrix):
            return []
        with self._using(name) as shard:
            requests = [
                self._query(name, shard, qe.Query.Nearest(v), k, f, None) for v, f in zip(matrix, flts, strict=True)
            ]
            batch = qe.QueryBatchRequest(requests)
            results = self._call(name, "search_batch", shard.query_batch, batch)
        return [hits(pts) for pts in results]

    def _page(self, name: str, query: Any, flt: SearchFilter | None, n: int, ef: int | None = None) -> list[Hit]:
        with self._using(name) as shard:
            request = self._query(name, shard, query, n, flt, ef)
            points = self._call(name, "search", shard.query, request)
        return hits(points)

    def search_groups(
        self,
        name: str,
        vector: np.ndarray,
        k: int,
        flt: SearchFilter | None = None,
        *,
        group_by: str = "patient_hash",
        hnsw_ef: int | None = None,
    ) -> list[Hit]:
        """qdrant-edge 0.9.0 has no group-by: full pages by repeated searches (store.collect_groups)."""
        query = qe.Query.Nearest(as_vector(name, vector, self._dim(name)))
        k, group_by = check_k(k), check_group_field(group_by)
        return collect_groups(lambda f, n: self._page(name, query, f, n, hnsw_ef), flt, k, group_by)

    def recommend(
        self,
        name: str,
        positive: Sequence[str],
        negative: Sequence[str] = (),
        k: int = 10,
        flt: SearchFilter | None = None,
        *,
        group_by: str | None = None,
    ) -> list[Hit]:
        k = check_k(k)
        examples, pos, neg = example_vectors(self, name, positive, negative, group_by)
        query = qe.Query.RecommendBestScore(qe.RecommendQuery(pos, neg))
        base = excluding(flt, examples)  # the engine would rank the positives first
        if group_by is None:
            return self._page(name, query, base, k)
        return collect_groups(lambda f, n: self._page(name, query, f, n), base, k, group_by)

    def retrieve(self, name: str, ids: Sequence[str], *, with_vectors: bool = False) -> list[PointRecord]:
        canon = check_ids(ids)
        with self._using(name) as shard:
            recs = self._call(name, "retrieve", shard.retrieve, canon, True, with_vectors)
        return in_order(canon, recs)

    def scroll(
        self, name: str, *, batch: int = 1000, with_vectors: bool = False, flt: SearchFilter | None = None
    ) -> Iterator[PointRecord]:
        batch = check_k(batch)
        with self._using(name):  # fail here, not at the first next()
            pass
        where = _edge_filter(flt)

        def page(offset: Any) -> tuple[Any, Any]:
            # A page per call: the store may change hands between pages, and offsets stay valid.
            request = qe.ScrollRequest(
                offset=offset, limit=batch, filter=where, with_payload=True, with_vector=with_vectors
            )
            with self._using(name) as shard:
                return self._call(name, "scroll", shard.scroll, request)

        return scroll_records(page)

    def count(self, name: str) -> int:
        with self._using(name) as shard:
            return int(self._call(name, "count", shard.count, qe.CountRequest(exact=True)))

    def facet(self, name: str, key: str, *, limit: int = 1000) -> list[tuple[str | int, int]]:
        request = qe.FacetRequest(check_facet_key(key), limit=limit, exact=True)
        self._ensure_indexes(name)  # a collection made before the field was indexed
        with self._using(name) as shard:
            hits = self._call(name, "facet", shard.facet, request).hits
        return [(h.value, int(h.count)) for h in hits]

    def unindexed_count(self, name: str) -> int:
        """Points searched exactly because no HNSW graph holds them yet: the shard's points minus its indexed
        vectors, or, if more, the points this object upserted since its last optimize(). The engine counts an
        updated or deleted point in an indexed segment as still indexed; the second term catches updates."""
        with self._using(name) as shard:
            info = self._call(name, "info", shard.info)
        return max(0, int(info.points_count) - int(info.indexed_vectors_count), self._pending.get(name, 0))

    def optimize(self, name: str) -> None:
        """Index what the optimizer plans: segments past the indexing threshold, merges up to the segment size.
        Blocking, and it holds the GIL; with a threshold and a segment size it costs one segment, not the store."""
        with self._using(name) as shard:
            self._call(name, "optimize", shard.optimize)
            self._flush_open(name, shard)
            self._pending.pop(name, None)

    def close(self) -> None:
        """Flush and close every open shard and give the store back. The store reopens shards if used again."""
        with self._lock:
            self._dims.clear()
            self._hand_over()
