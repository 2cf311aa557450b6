"""The server store: a Qdrant server through qdrant-client (or its in-process `:memory:` mode, used in tests).

Use it when several processes (API, workers, CLI) must share one index; the embedded store allows one process.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from services.errors import CollectionNotFoundError, ConfigError, StoreError, StoreUnavailableError
from services.index.store import (
    INDEXED_FIELDS,
    CollectionInfo,
    Hit,
    PointRecord,
    SearchFilter,
    as_matrix,
    as_vector,
    check_dim,
    check_filters,
    check_group_field,
    check_ids,
    check_k,
    check_name,
    check_points,
    example_vectors,
    excluding,
    merge_groups,
    restore_ids,
)
from services.index.tuning import IndexTuning, points_to_kb

T = TypeVar("T")
_SCHEMA = {"keyword": qm.PayloadSchemaType.KEYWORD, "integer": qm.PayloadSchemaType.INTEGER}


def _server_filter(flt: SearchFilter | None) -> qm.Filter | None:
    """SearchFilter -> qdrant-client Filter."""
    if flt is None or flt.is_empty:
        return None

    def cond(key: str, values: Sequence[str | int]) -> qm.FieldCondition:
        match: qm.MatchValue | qm.MatchAny
        match = qm.MatchValue(value=values[0]) if len(values) == 1 else qm.MatchAny(any=list(values))
        return qm.FieldCondition(key=key, match=match)

    must: list[Any] = [cond(k, v) for k, v in flt.must.items()]
    must_not: list[Any] = [cond(k, v) for k, v in flt.must_not.items()]
    if flt.exclude_ids:
        must_not.append(qm.HasIdCondition(has_id=list(flt.exclude_ids)))
    return qm.Filter(must=must or None, must_not=must_not or None)


def _vector(raw: Any) -> np.ndarray | None:
    return None if raw is None else np.asarray(raw, dtype=np.float32)


def _hits(points: Sequence[qm.ScoredPoint]) -> list[Hit]:
    return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]


class QdrantServerStore:
    """VectorStore on a Qdrant server at `url` (with an optional `api_key`), or on qdrant-client's local mode
    with `location=":memory:"`. `tuning` sets the HNSW graph and optimizer sizes of new collections and the
    search defaults (the server indexes in the background by itself)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        location: str | None = None,
        tuning: IndexTuning | None = None,
    ) -> None:
        if url and location:
            raise ConfigError("give the Qdrant store a url or a location, not both")
        if not url and not location:
            raise ConfigError("the Qdrant server store needs a url (or location=':memory:' for tests)")
        if api_key and not url:
            raise ConfigError("a Qdrant API key only makes sense with a server url", "Set CXR_QDRANT_URL too.")
        self.where = url or location or ""
        self._local = not url  # qdrant-client's local mode: exact search only, and it warns about search params
        self._client = (
            QdrantClient(url=url, api_key=api_key, check_compatibility=False)
            if url
            else QdrantClient(location=location)
        )
        self._dims: dict[str, int] = {}
        self.tuning = tuning or IndexTuning()

    def __enter__(self) -> QdrantServerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, name: str | None, doing: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a client call, turning its many exception types into the cxr error hierarchy."""
        try:
            return fn(*args, **kwargs)
        except UnexpectedResponse as exc:
            if exc.status_code == 404 and name is not None:
                self._dims.pop(name, None)
                raise CollectionNotFoundError(f"no collection {name!r} on Qdrant at {self.where}") from exc
            if exc.status_code in (401, 403):
                raise StoreError(
                    f"Qdrant at {self.where} refused the request ({exc.status_code})",
                    "Check CXR_QDRANT_API_KEY.",
                ) from exc
            raise StoreError(f"{doing} failed on Qdrant at {self.where}: {exc}") from exc
        except (ResponseHandlingException, ConnectionError, TimeoutError) as exc:
            raise StoreUnavailableError(f"cannot reach Qdrant at {self.where}: {exc}") from exc
        except ValueError as exc:  # local mode reports unknown collections and bad input this way
            if name is not None and "not found" in str(exc):
                self._dims.pop(name, None)
                raise CollectionNotFoundError(f"no collection {name!r} on Qdrant at {self.where}") from exc
            raise StoreError(f"{doing} failed on Qdrant at {self.where}: {exc}") from exc

    def _dim(self, name: str) -> int:
        if name in self._dims:
            return self._dims[name]
        info = self._call(name, "describe collection", self._client.get_collection, check_name(name))
        params = info.config.params.vectors
        if not isinstance(params, qm.VectorParams):
            raise StoreError(f"collection {name!r} on {self.where} uses named vectors; it is not a cxr collection")
        if params.distance != qm.Distance.COSINE:
            raise StoreError(f"collection {name!r} on {self.where} uses {params.distance} distance, not cosine")
        self._dims[name] = params.size
        return params.size

    # -- collections

    def create_collection(self, name: str, dim: int) -> None:
        name, dim = check_name(name), check_dim(dim)
        if not self.has_collection(name):
            vectors = qm.VectorParams(size=dim, distance=qm.Distance.COSINE)
            try:
                self._call(
                    name,
                    "create collection",
                    self._client.create_collection,
                    name,
                    vectors_config=vectors,
                    hnsw_config=self._hnsw_config(),
                    optimizers_config=self._optimizers_config(dim),
                )
            except StoreError:
                if not self.has_collection(name):  # else another process created it first: check its dim
                    raise
            else:
                with warnings.catch_warnings():  # local mode warns that it ignores payload indexes
                    warnings.simplefilter("ignore", UserWarning)
                    for key, kind in INDEXED_FIELDS.items():
                        self._call(name, "index", self._client.create_payload_index, name, key, _SCHEMA[kind])
        have = self._dim(name)
        if have != dim:
            raise StoreError(
                f"collection {name!r} exists with {have}-d vectors, not {dim}-d",
                "Use a new collection name for a model with another embedding size.",
            )

    def _hnsw_config(self) -> qm.HnswConfigDiff | None:
        t = self.tuning
        if not t.sets_graph:
            return None
        return qm.HnswConfigDiff(
            m=t.hnsw_m,
            ef_construct=t.hnsw_ef_construct,
            payload_m=t.hnsw_payload_m,
            max_indexing_threads=t.index_threads,
        )

    def _optimizers_config(self, dim: int) -> qm.OptimizersConfigDiff | None:
        t = self.tuning
        if not (t.threshold_points or t.segment_points or t.merge_segments is not None):
            return None
        return qm.OptimizersConfigDiff(
            indexing_threshold=points_to_kb(t.threshold_points, dim) if t.threshold_points else None,
            max_segment_size=points_to_kb(t.segment_points, dim) if t.segment_points else None,
            default_segment_number=t.merge_segments,
        )

    def _size(self, name: str, filters: Sequence[SearchFilter | None]) -> int | None:
        """The collection's (approximate) point count when the tuning needs it to choose exact search, else None:
        one request per call, however many queries it holds."""
        if self._local or not self.tuning.needs_size(filters):
            return None
        return int(self._call(name, "count", self._client.count, name, exact=False).count)

    def _search_params(
        self, flt: SearchFilter | None, hnsw_ef: int | None, points: int | None
    ) -> qm.SearchParams | None:
        """Exact where IndexTuning.exact says so (as the embedded store), else the beam and ACORN."""
        if self._local:  # exact search only; it warns about parameters it ignores
            return None
        if self.tuning.exact(flt, points):
            return qm.SearchParams(exact=True)
        filtered = flt is not None and not flt.is_empty
        ef = hnsw_ef or self.tuning.search_hnsw_ef
        acorn = self.tuning.acorn_max_selectivity if filtered else 0.0
        if not ef and not acorn:
            return None
        return qm.SearchParams(
            hnsw_ef=ef, acorn=qm.AcornSearchParams(enable=True, max_selectivity=acorn) if acorn else None
        )

    def has_collection(self, name: str) -> bool:
        return bool(self._call(None, "check collection", self._client.collection_exists, check_name(name)))

    def collections(self) -> list[CollectionInfo]:
        """cxr-shaped collections on the server (one unnamed cosine vector); others are left out."""
        found = self._call(None, "list collections", self._client.get_collections).collections
        out = []
        for name in sorted(c.name for c in found):
            try:
                out.append(CollectionInfo(name, self._dim(check_name(name)), self.count(name)))
            except CollectionNotFoundError:
                continue  # deleted meanwhile
            except StoreError:
                continue  # not a cxr collection (name, vector layout or distance)
        return out

    def delete_collection(self, name: str) -> None:
        if not self.has_collection(name):
            raise CollectionNotFoundError(f"no collection {name!r} on Qdrant at {self.where}")
        self._call(name, "delete collection", self._client.delete_collection, name)
        self._dims.pop(name, None)

    # -- points

    def upsert(self, name: str, points: Sequence[PointRecord], *, flush: bool = True) -> None:
        """Insert or replace points (waiting for the server to apply them); `flush` changes nothing here: the
        server persists through its own write-ahead log."""
        del flush
        ids, matrix = check_points(name, points, self._dim(name))
        if not ids:
            return
        structs = [
            qm.PointStruct(id=pid, vector=row.tolist(), payload=dict(p.payload))
            for pid, row, p in zip(ids, matrix, points, strict=True)
        ]
        self._call(name, "upsert", self._client.upsert, name, points=structs, wait=True)

    def existing_ids(self, name: str, ids: Sequence[str]) -> set[str]:
        canon = check_ids(ids)
        self._dim(name)
        found: set[str] = set()
        for i in range(0, len(canon), 1000):
            recs = self._call(name, "retrieve", self._client.retrieve, name, canon[i : i + 1000], with_payload=False)
            found.update(str(r.id) for r in recs)
        return restore_ids(ids, found)

    def search(
        self,
        name: str,
        vector: np.ndarray,
        k: int,
        flt: SearchFilter | None = None,
        *,
        hnsw_ef: int | None = None,
    ) -> list[Hit]:
        query = as_vector(name, vector, self._dim(name))
        server_filter = _server_filter(flt)
        response = self._call(
            name,
            "search",
            self._client.query_points,
            name,
            query=query.tolist(),
            limit=check_k(k),
            query_filter=server_filter,
            with_payload=True,
            search_params=self._search_params(flt, hnsw_ef, self._size(name, [flt])),
        )
        return _hits(response.points)

    def search_batch(
        self,
        name: str,
        vectors: np.ndarray,
        k: int,
        filters: Sequence[SearchFilter | None] | None = None,
    ) -> list[list[Hit]]:
        matrix = as_matrix(name, vectors, self._dim(name))
        k, flts = check_k(k), check_filters(filters, len(matrix))
        if not len(matrix):
            return []
        requests = []
        size = self._size(name, flts)
        for v, f in zip(matrix, flts, strict=True):
            server_filter = _server_filter(f)
            params = self._search_params(f, None, size)
            requests.append(
                qm.QueryRequest(query=v.tolist(), limit=k, filter=server_filter, with_payload=True, params=params)
            )
        responses = self._call(name, "search_batch", self._client.query_batch_points, name, requests=requests)
        return [_hits(r.points) for r in responses]

    def _grouped(
        self, name: str, query: Any, k: int, flt: SearchFilter | None, group_by: str, hnsw_ef: int | None = None
    ) -> list[Hit]:
        """Qdrant's group-by (one hit per group), plus the points without the field, which it leaves out."""
        server_filter = _server_filter(flt)
        params = self._search_params(flt, hnsw_ef, self._size(name, [flt]))
        groups = self._call(
            name,
            "group search",
            self._client.query_points_groups,
            name,
            group_by,
            query=query,
            limit=k,
            group_size=1,
            query_filter=server_filter,
            with_payload=True,
            search_params=params,
        ).groups
        leaders = [_hits(g.hits)[0] for g in groups if g.hits]
        no_field = qm.IsEmptyCondition(is_empty=qm.PayloadField(key=group_by))
        base = server_filter or qm.Filter()
        lone_filter = qm.Filter(must=[*(base.must or []), no_field], must_not=base.must_not)
        lone = self._call(
            name,
            "search",
            self._client.query_points,
            name,
            query=query,
            limit=k,
            query_filter=lone_filter,
            with_payload=True,
            search_params=params,
        ).points
        return merge_groups(leaders, _hits(lone), k)

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
        query = as_vector(name, vector, self._dim(name))
        return self._grouped(name, query.tolist(), check_k(k), flt, check_group_field(group_by), hnsw_ef)

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
        # Vectors rather than ids, so the same query runs on every adapter; the examples are excluded explicitly.
        query = qm.RecommendQuery(
            recommend=qm.RecommendInput(
                positive=[v.tolist() for v in pos],
                negative=[v.tolist() for v in neg],
                strategy=qm.RecommendStrategy.BEST_SCORE,
            )
        )
        base = excluding(flt, examples)
        if group_by is not None:
            return self._grouped(name, query, k, base, group_by)
        server_filter = _server_filter(base)
        response = self._call(
            name,
            "recommend",
            self._client.query_points,
            name,
            query=query,
            limit=k,
            query_filter=server_filter,
            with_payload=True,
            search_params=self._search_params(base, None, self._size(name, [base])),
        )
        return _hits(response.points)

    def retrieve(self, name: str, ids: Sequence[str], *, with_vectors: bool = False) -> list[PointRecord]:
        canon = check_ids(ids)
        self._dim(name)
        recs = self._call(
            name, "retrieve", self._client.retrieve, name, canon, with_payload=True, with_vectors=with_vectors
        )
        by_id = {str(r.id): r for r in recs}
        return [
            PointRecord(pid, _vector(by_id[pid].vector), dict(by_id[pid].payload or {}))
            for pid in dict.fromkeys(canon)
            if pid in by_id
        ]

    def scroll(self, name: str, *, batch: int = 1000, with_vectors: bool = False) -> Iterator[PointRecord]:
        batch = check_k(batch)
        self._dim(name)  # fail here, not at the first next()

        def pages() -> Iterator[PointRecord]:
            offset: Any = None
            while True:
                recs, offset = self._call(
                    name,
                    "scroll",
                    self._client.scroll,
                    name,
                    limit=batch,
                    offset=offset,
                    with_payload=True,
                    with_vectors=with_vectors,
                )
                for r in recs:
                    yield PointRecord(str(r.id), _vector(r.vector), dict(r.payload or {}))
                if offset is None:
                    return

        return pages()

    def count(self, name: str) -> int:
        self._dim(name)
        return int(self._call(name, "count", self._client.count, name, exact=True).count)

    def unindexed_count(self, name: str) -> int:
        """Points the server has not put in an HNSW graph yet (points minus indexed vectors; approximate, as
        the server reports it). The server indexes them by itself; local mode never does."""
        info = self._call(name, "describe collection", self._client.get_collection, check_name(name))
        return max(0, int(info.points_count or 0) - int(info.indexed_vectors_count or 0))

    def flush(self, name: str) -> None:
        """Nothing to do: the server persists what it acknowledged (upserts wait for it)."""
        del name

    def optimize(self, name: str) -> None:
        """The server builds HNSW in the background once a segment passes its indexing threshold; nothing to
        do here beyond checking the collection exists."""
        self._dim(name)

    def close(self) -> None:
        self._client.close()
