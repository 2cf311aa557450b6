"""The embedded store: Qdrant's engine in process (qdrant-edge-py 0.9.0), one EdgeShard per collection or part.

Layout: ROOT/<collection>/cxr-collection.json records the vector size and the layout, and is written last, so a
collection exists exactly when that file does. A collection is either one shard, in ROOT/<collection>/ itself, or
(`IndexTuning.label_parts`, the default for new collections) a shared shard and, once it is large, one per label,
ROOT/<collection>/parts/<part>/, each with a cxr-part.json naming its label (services.index.label_parts decides
which part holds a point and which parts a search visits). Only one process may open a shard (its write-ahead log
is locked); a second opener gets StoreLockedError.

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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from services.durable import write_atomically
from services.errors import CollectionNotFoundError, StoreError, StoreLockedError
from services.index.edge_params import edge_config, edge_optimizers, index_fields
from services.index.edge_shards import LeasedShards
from services.index.grouping import collect_groups
from services.index.label_parts import REST, Parts, merge_counts, merge_hits, part_labels
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
PART_FILE = "cxr-part.json"
PARTS_DIR = "parts"


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
    sets the threshold and segment size in points, the HNSW graph and the layout of new collections and the search
    defaults; give the threshold one way or the other, not both.

    A shard is named by its key: the collection's name for a one-shard collection, `<name>/<part>` for a part.
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
        self._pending: dict[str, int] = {}  # points upserted since this object's last optimize(), per shard key
        self._meta: dict[str, dict[str, Any]] = {}  # collection records read
        self._parts: dict[str, Parts] = {}  # partitioned collections' parts, read while the lease is held
        self._indexed: set[str] = set()  # collections whose INDEXED_FIELDS indexes are known to exist
        self._pool: ThreadPoolExecutor | None = None  # searches of several parts at once (_in_parallel)

    def __enter__(self) -> QdrantEdgeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- shards

    def _dir(self, name: str) -> Path:
        return self.root / check_name(name)

    def _key_dir(self, key: str) -> Path:
        name, _, part = key.partition("/")
        return self._dir(name) / PARTS_DIR / part if part else self._dir(name)

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

    def _record(self, name: str) -> dict[str, Any]:
        if name in self._meta:
            return self._meta[name]
        meta = self._dir(name) / META_FILE
        try:
            record = json.loads(meta.read_text())
            record["dim"] = int(record["dim"])
            record["label_parts"] = int(record.get("label_parts", 0))
            record["label_parts_from"] = int(record.get("label_parts_from", 0))
        except FileNotFoundError:
            raise CollectionNotFoundError(f"no collection {name!r} in the embedded store {self.root}") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"unreadable collection record {meta}: {exc}") from exc
        self._meta[name] = record
        return record

    def _dim(self, name: str) -> int:
        return int(self._record(name)["dim"])

    def _partitioned(self, name: str) -> Parts | None:
        """The parts of a collection kept one shard per label (read from their records while the lease is
        held, and kept until it is given back), or None for a one-shard collection."""
        max_own = self._record(name)["label_parts"]
        if not max_own:
            return None
        if name not in self._parts:
            self._lease.acquire()
            records = {}
            for path in sorted((self._dir(name) / PARTS_DIR).glob(f"*/{PART_FILE}")):
                try:
                    records[path.parent.name] = json.loads(path.read_text()).get("label")
                except (OSError, ValueError, AttributeError) as exc:
                    raise StoreError(f"unreadable part record {path}: {exc}") from exc
            self._parts[name] = Parts(max_own, self._record(name)["label_parts_from"], part_labels(records))
        return self._parts[name]

    def _released(self) -> None:
        self._parts.clear()  # another process may add parts now

    def _keys(self, name: str) -> list[str]:
        """The shard keys of every part of `name`."""
        parts = self._partitioned(name)
        return [name] if parts is None else [f"{name}/{part}" for part in parts.names]

    def _visits(self, name: str, flt: SearchFilter | None) -> list[tuple[str, SearchFilter | None]]:
        """The shards a search of `name` with `flt` visits, each with the filter to apply there."""
        parts = self._partitioned(name)
        if parts is None:
            return [(name, flt)]
        return [(f"{name}/{part}", f) for part, f in parts.visits(flt)]

    def _shard(self, key: str) -> qe.EdgeShard:
        """The open shard for `key`, opening (and locking) it on first use."""
        with self._lock:
            shard = self._shards.get(key)
            if shard is None:
                dim = self._dim(key.partition("/")[0])  # CollectionNotFoundError before touching the engine
                self._lease.acquire()
                shard = self._shards[key] = self._load(self._key_dir(key), dim)
            return shard

    def _call(self, key: str, doing: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except StoreError:
            raise
        except Exception as exc:
            name = key.partition("/")[0]
            raise StoreError(f"{doing} failed in collection {name!r} ({self._key_dir(key)}): {exc}") from exc

    # -- collections

    def create_collection(self, name: str, dim: int) -> None:
        path, dim = self._dir(name), check_dim(dim)
        with self._lock:
            if self.has_collection(name):
                check_same_dim(name, self._dim(name), dim)
                self._ensure_indexes(name)
                return
            parts = self.tuning.label_parts
            with self._leased():  # a failed create gives the lease back
                if path.exists():  # an interrupted create: never visible as a collection
                    self._clear_partial(path)
                first = path / PARTS_DIR / REST if parts else path
                shard = self._create(first, dim)
                if parts:
                    _write_json(first / PART_FILE, {"label": None})
                record = {"dim": dim, "distance": "Cosine", "created_at": datetime.now(UTC).isoformat()}
                layout = {"label_parts": parts, "label_parts_from": self.tuning.label_parts_from}
                _write_json(path / META_FILE, {**record, **layout} if parts else record)
            self._shards[f"{name}/{REST}" if parts else name] = shard
            self._meta.pop(name, None)
            self._last_used = time.monotonic()
            self._after_call()

    def _create(self, path: Path, dim: int) -> qe.EdgeShard:
        """A new shard at `path` with the payload indexes."""
        path.mkdir(parents=True)
        try:
            shard = qe.EdgeShard.create(str(path), self._config(dim, creating=True))
            index_fields(shard, INDEXED_FIELDS)
        except Exception as exc:
            raise self._engine_error(exc, path, "create") from exc
        return shard

    def _new_part(self, name: str, parts: Parts, label: str, part: str) -> None:
        """Create `label`'s own part of `name` (under the lease); its record is written last, so a part exists
        exactly when its record does, and a half-made one is cleared and made again."""
        path = self._dir(name) / PARTS_DIR / part
        if path.exists():
            shutil.rmtree(path)
        self._shards[f"{name}/{part}"] = self._create(path, self._dim(name))
        _write_json(path / PART_FILE, {"label": label})
        parts.add(label, part)

    def _ensure_indexes(self, name: str) -> None:
        """Give a collection made by an older cxr the payload indexes added since (once per store object)."""
        if name not in self._indexed:
            with self._session():
                for key in self._keys(name):
                    shard = self._shard(key)
                    have = set(self._call(key, "info", shard.info).payload_schema)
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
        with self._session():
            for key in self._keys(name):
                shard = self._shard(key)  # holds the lease, so another process's open shard is never deleted
                shard.close()
                self._shards.pop(key, None)
                self._dirty.discard(key)
                self._pending.pop(key, None)
            self._meta.pop(name, None)
            self._parts.pop(name, None)
            self._indexed.discard(name)
            (path / META_FILE).unlink()
            shutil.rmtree(path)

    # -- points

    def upsert(self, name: str, points: Sequence[PointRecord], *, flush: bool = True) -> None:
        """Insert or replace points by id. With `flush=False` they are searchable and survive a killed process
        (the write-ahead log), but not a power cut until `flush(name)`. In a collection kept one shard per label,
        a point whose label changed is first removed from its old part."""
        ids, matrix = check_points(name, points, self._dim(name))
        if not ids:
            return
        batch = [qe.Point(pid, row, dict(p.payload)) for pid, row, p in zip(ids, matrix, points, strict=True)]
        with self._session():
            parts = self._partitioned(name)
            if parts is None:
                self._write(name, batch, flush)
                return
            last = {pid: i for i, pid in enumerate(ids)}  # an id given twice: its last copy, as the engine does
            rest_points = self._count(f"{name}/{REST}") if parts.room else 0  # labels get parts from a size on
            target: dict[str, str] = {}
            by_part: dict[str, list[qe.Point]] = {}
            for i in sorted(last.values()):
                label = points[i].payload.get("label")
                part, new = parts.route(label, rest_points)
                if new:
                    self._new_part(name, parts, str(label), part)
                target[ids[i]] = key = f"{name}/{part}"
                by_part.setdefault(key, []).append(batch[i])
            for key in self._keys(name):
                moved = self._found(key, [pid for pid in ids if target[pid] != key])
                if moved:
                    self._remove(key, sorted(moved), flush)
            for key, group in by_part.items():
                self._write(key, group, flush)

    def _write(self, key: str, batch: list[qe.Point], flush: bool) -> None:
        shard = self._shard(key)
        self._dirty.add(key)
        self._call(key, "upsert", shard.update, qe.UpdateOperation.upsert_points(batch))
        self._pending[key] = self._pending.get(key, 0) + len(batch)
        if flush:
            self._flush_open(key, shard)

    def _remove(self, key: str, ids: list[str], flush: bool) -> None:
        shard = self._shard(key)
        self._dirty.add(key)
        self._call(key, "delete", shard.update, qe.UpdateOperation.delete_points(ids))
        if flush:
            self._flush_open(key, shard)

    def _found(self, key: str, ids: list[str]) -> set[str]:
        """The canonical `ids` stored in shard `key`."""
        if not ids:
            return set()
        shard = self._shard(key)
        return found_ids(ids, lambda chunk: self._call(key, "retrieve", shard.retrieve, chunk, False, False))

    def _flush_open(self, key: str, shard: qe.EdgeShard) -> None:
        self._call(key, "flush", shard.flush)
        self._dirty.discard(key)

    def flush(self, name: str) -> None:
        """Make every point upserted into `name` so far durable. Free when nothing was written since the last
        flush, including the flush of a hand-over to another process (which may already have done it)."""
        with self._lock:
            dirty = sorted(k for k in self._dirty if k.partition("/")[0] == name)
            if not dirty:
                return
            with self._session():  # reopens only if a hand-over's flush failed
                for key in dirty:
                    self._flush_open(key, self._shard(key))

    def delete_points(self, name: str, ids: Sequence[str], *, flush: bool = True) -> None:
        canon = check_ids(ids)
        if not canon:
            return
        with self._session():
            keys = self._keys(name)
            for key in keys:
                here = canon if len(keys) == 1 else sorted(self._found(key, canon))
                if here:
                    self._remove(key, here, flush)

    def existing_ids(self, name: str, ids: Sequence[str]) -> set[str]:
        canon = check_ids(ids)
        with self._session():
            found = set().union(*(self._found(key, canon) for key in self._keys(name)))
        return restore_ids(ids, found)

    def _query(
        self, key: str, shard: Any, query: Any, k: int, flt: SearchFilter | None, ef: int | None
    ) -> qe.QueryRequest:
        """A request for `query`, searched as IndexTuning.search_plan says (exact, or the beam and ACORN). Where the
        plan depends on how many points `flt` keeps, the engine's estimate is asked for (one payload-index lookup)."""
        engine_flt = _edge_filter(flt)
        matches = None
        if self.tuning.needs_matches(flt):
            matches = int(self._call(key, "count", shard.count, qe.CountRequest(filter=engine_flt, exact=False)))
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
        """One engine call per part visited, holding every query that visits it."""
        matrix, k, flts = check_batch(name, vectors, self._dim(name), k, filters)
        if not len(matrix):
            return []
        pages: list[list[list[Hit]]] = [[] for _ in matrix]
        with self._session():
            asks: dict[str, list[tuple[int, SearchFilter | None]]] = {}
            for i, flt in enumerate(flts):
                for key, f in self._visits(name, flt):
                    asks.setdefault(key, []).append((i, f))
            calls = []
            for key, ask in asks.items():
                shard = self._shard(key)
                requests = [self._query(key, shard, qe.Query.Nearest(matrix[i]), k, f, None) for i, f in ask]
                batch = qe.QueryBatchRequest(requests)
                calls.append(partial(self._call, key, "search_batch", shard.query_batch, batch))
            for ask, results in zip(asks.values(), self._in_parallel(calls), strict=True):
                for (i, _), points in zip(ask, results, strict=True):
                    pages[i].append(hits(points))
        return [merge_hits(p, k) for p in pages]

    def _page(self, name: str, query: Any, flt: SearchFilter | None, n: int, ef: int | None = None) -> list[Hit]:
        """The `n` best for `query` over every part `flt` visits."""
        with self._session():
            calls = []
            for key, f in self._visits(name, flt):
                shard = self._shard(key)
                request = self._query(key, shard, query, n, f, ef)
                calls.append(partial(self._call, key, "search", shard.query, request))
            pages = [hits(points) for points in self._in_parallel(calls)]
        return pages[0] if len(pages) == 1 else merge_hits(pages, n)

    def _in_parallel(self, calls: list[Callable[[], Any]]) -> list[Any]:
        """Engine calls on different shards, on a thread each up to one per core (the engine releases the GIL while
        it searches). Shards are opened and requests built beforehand, in the caller's thread, which holds the
        store's lock."""
        if len(calls) <= 1:
            return [call() for call in calls]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="cxr-store-search")
        return list(self._pool.map(lambda call: call(), calls))

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
        recs: list[Any] = []
        with self._session():
            for key in self._keys(name):
                shard = self._shard(key)
                recs.extend(self._call(key, "retrieve", shard.retrieve, canon, True, with_vectors))
        return in_order(canon, recs)

    def scroll(
        self, name: str, *, batch: int = 1000, with_vectors: bool = False, flt: SearchFilter | None = None
    ) -> Iterator[PointRecord]:
        """Part after part (each part's points in id order)."""
        batch = check_k(batch)
        with self._session():  # fail here, not at the first next()
            visits = self._visits(name, flt)
        return (record for key, f in visits for record in self._scroll_part(key, batch, with_vectors, f))

    def _scroll_part(self, key: str, batch: int, with_vectors: bool, flt: SearchFilter | None) -> Iterator[PointRecord]:
        where = _edge_filter(flt)

        def page(offset: Any) -> tuple[Any, Any]:
            # A page per call: the store may change hands between pages, and offsets stay valid.
            request = qe.ScrollRequest(
                offset=offset, limit=batch, filter=where, with_payload=True, with_vector=with_vectors
            )
            with self._using(key) as shard:
                return self._call(key, "scroll", shard.scroll, request)

        return scroll_records(page)

    def count(self, name: str) -> int:
        with self._session():
            return sum(self._count(key) for key in self._keys(name))

    def _count(self, key: str) -> int:
        return int(self._call(key, "count", self._shard(key).count, qe.CountRequest(exact=True)))

    def facet(self, name: str, key: str, *, limit: int = 1000) -> list[tuple[str | int, int]]:
        request = qe.FacetRequest(check_facet_key(key), limit=limit, exact=True)
        self._ensure_indexes(name)  # a collection made before the field was indexed
        with self._session():
            pages = [
                [(h.value, int(h.count)) for h in self._call(k, "facet", self._shard(k).facet, request).hits]
                for k in self._keys(name)
            ]
        return pages[0] if len(pages) == 1 else merge_counts(pages, limit)

    def unindexed_count(self, name: str) -> int:
        """Points searched exactly because no HNSW graph holds them yet, in the part that has most: the shard's
        points minus its indexed vectors, or, if more, the points this object upserted since its last optimize().
        The engine counts an updated or deleted point in an indexed segment as still indexed; the second term
        catches updates."""
        with self._session():
            return max(self._unindexed(key) for key in self._keys(name))

    def _unindexed(self, key: str) -> int:
        info = self._call(key, "info", self._shard(key).info)
        return max(0, int(info.points_count) - int(info.indexed_vectors_count), self._pending.get(key, 0))

    def optimize(self, name: str) -> None:
        """Index what the optimizer plans: segments past the indexing threshold, merges up to the segment size,
        in every part with enough unindexed points to index. Blocking, and it holds the GIL; with a threshold and a
        segment size it costs one segment per part, not the store."""
        with self._session():
            keys = self._keys(name)
            for key in keys:
                if len(keys) > 1 and self._unindexed(key) < (self.tuning.threshold_points or 1):
                    continue  # a part the engine would leave as it is: spare its flush
                shard = self._shard(key)
                self._call(key, "optimize", shard.optimize)
                self._flush_open(key, shard)
                self._pending.pop(key, None)

    def close(self) -> None:
        """Flush and close every open shard and give the store back. The store reopens shards if used again."""
        with self._lock:
            self._meta.clear()
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None
            self._hand_over()


def _write_json(path: Path, record: dict[str, Any]) -> None:
    write_atomically(path, json.dumps(record).encode())
