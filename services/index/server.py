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
from services.index.grouping import merge_groups
from services.index.server_params import server_hnsw, server_optimizers
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

T = TypeVar("T")
_SCHEMA = {"keyword": qm.PayloadSchemaType.KEYWORD, "integer": qm.PayloadSchemaType.INTEGER}


def _server_filter(flt: SearchFilter | None) -> qm.Filter | None:
    """SearchFilter -> qdrant-client Filter."""
    return engine_filter(flt, qm, lambda ids: qm.HasIdCondition(has_id=list(ids)))


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
        self._indexed: set[str] = set()  # collections whose INDEXED_FIELDS indexes are known to exist
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
                self._indexed.discard(name)
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
                self._indexed.discard(name)
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
                    hnsw_config=server_hnsw(self.tuning),
                    optimizers_config=server_optimizers(self.tuning, dim),
                )
            except StoreError:
                if not self.has_collection(name):  # else another process created it first: check its dim
                    raise
        check_same_dim(name, self._dim(name), dim)
        self._ensure_indexes(name)

    def _ensure_indexes(self, name: str) -> None:
        """The INDEXED_FIELDS payload indexes, for a new collection or one made by an older cxr (once per object)."""
        if name in self._indexed:
            return
        have = self._call(name, "info", self._client.get_collection, name).payload_schema or {}
        with warnings.catch_warnings():  # local mode warns that it ignores payload indexes
            warnings.simplefilter("ignore", UserWarning)
            for key, kind in INDEXED_FIELDS.items():
                if key not in have:
                    self._call(name, "index", self._client.create_payload_index, name, key, _SCHEMA[kind])
        self._indexed.add(name)

    def _search_params(
        self, name: str, flt: SearchFilter | None, server_filter: qm.Filter | None, hnsw_ef: int | None
    ) -> qm.SearchParams | None:
        """As IndexTuning.search_plan says (as for the embedded store): exact, or the beam and ACORN. Where the plan
        depends on how many points `flt` (translated: `server_filter`) keeps, the server's estimate is asked for."""
        if self._local:  # exact search only; it warns about parameters it ignores
            return None
        matches = None
        if self.tuning.needs_matches(flt):
            answer = self._call(name, "count", self._client.count, name, count_filter=server_filter, exact=False)
            matches = int(answer.count)
        return engine_search_params(self.tuning.search_plan(flt, matches, hnsw_ef), qm)

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
        self._indexed.discard(name)

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

    def delete_points(self, name: str, ids: Sequence[str], *, flush: bool = True) -> None:
        del flush  # the server persists through its own write-ahead log
        canon = check_ids(ids)
        if canon:
            self._dim(name)
            selector = qm.PointIdsList(points=list(canon))
            self._call(name, "delete", self._client.delete, name, points_selector=selector, wait=True)

    def existing_ids(self, name: str, ids: Sequence[str]) -> set[str]:
        canon = check_ids(ids)
        self._dim(name)
        found = found_ids(
            canon, lambda chunk: self._call(name, "retrieve", self._client.retrieve, name, chunk, with_payload=False)
        )
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
        return self._points(name, "search", query.tolist(), check_k(k), flt, hnsw_ef)

    def _points(
        self, name: str, doing: str, query: Any, k: int, flt: SearchFilter | None, hnsw_ef: int | None = None
    ) -> list[Hit]:
        """The `k` best points for `query` (a vector or a recommend query) that pass `flt`."""
        server_filter = _server_filter(flt)
        params = self._search_params(name, flt, server_filter, hnsw_ef)
        return self._query_points(name, doing, query, k, server_filter, params)

    def _query_points(
        self, name: str, doing: str, query: Any, k: int, server_filter: qm.Filter | None, params: Any
    ) -> list[Hit]:
        response = self._call(
            name,
            doing,
            self._client.query_points,
            name,
            query=query,
            limit=k,
            query_filter=server_filter,
            with_payload=True,
            search_params=params,
        )
        return hits(response.points)

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
        requests = []
        for v, f in zip(matrix, flts, strict=True):
            server_filter = _server_filter(f)
            params = self._search_params(name, f, server_filter, None)
            requests.append(
                qm.QueryRequest(query=v.tolist(), limit=k, filter=server_filter, with_payload=True, params=params)
            )
        responses = self._call(name, "search_batch", self._client.query_batch_points, name, requests=requests)
        return [hits(r.points) for r in responses]

    def _grouped(
        self, name: str, query: Any, k: int, flt: SearchFilter | None, group_by: str, hnsw_ef: int | None = None
    ) -> list[Hit]:
        """Qdrant's group-by (one hit per group), plus the points without the field, which it leaves out."""
        server_filter = _server_filter(flt)
        params = self._search_params(name, flt, server_filter, hnsw_ef)
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
        leaders = [hits(g.hits)[0] for g in groups if g.hits]
        no_field = qm.IsEmptyCondition(is_empty=qm.PayloadField(key=group_by))
        base = server_filter or qm.Filter()
        lone_filter = qm.Filter(must=[*(base.must or []), no_field], must_not=base.must_not)
        lone = self._query_points(name, "search", query, k, lone_filter, params)
        return merge_groups(leaders, lone, k)

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
        return self._points(name, "recommend", query, k, base)

    def retrieve(self, name: str, ids: Sequence[str], *, with_vectors: bool = False) -> list[PointRecord]:
        canon = check_ids(ids)
        self._dim(name)
        recs = self._call(
            name, "retrieve", self._client.retrieve, name, canon, with_payload=True, with_vectors=with_vectors
        )
        return in_order(canon, recs)

    def scroll(
        self, name: str, *, batch: int = 1000, with_vectors: bool = False, flt: SearchFilter | None = None
    ) -> Iterator[PointRecord]:
        batch = check_k(batch)
        self._dim(name)  # fail here, not at the first next()
        where = _server_filter(flt)

        def page(offset: Any) -> tuple[Any, Any]:
            return self._call(
                name,
                "scroll",
                self._client.scroll,
                name,
                scroll_filter=where,
                limit=batch,
                offset=offset,
                with_payload=True,
                with_vectors=with_vectors,
            )

        return scroll_records(page)

    def count(self, name: str) -> int:
        self._dim(name)
        return int(self._call(name, "count", self._client.count, name, exact=True).count)

    def facet(self, name: str, key: str, *, limit: int = 1000) -> list[tuple[str | int, int]]:
        self._dim(name)
        answer = self._call(name, "facet", self._client.facet, name, check_facet_key(key), limit=limit, exact=True)
        return [(h.value, int(h.count)) for h in answer.hits]

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
