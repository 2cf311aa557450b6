"""The VectorStore contract: records, hits, filters, and the checks every adapter applies before the engine.

Adapters (embedded Qdrant, Qdrant server) translate these plain types into their own engine's models; nothing
engine-specific lives here, so the pipeline and the CLI depend on this module only.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from services.ages import age_filter_values, filter_age
from services.errors import PointNotFoundError, StoreError

# Payload fields that get an index at collection creation: the ones search filters use.
INDEXED_FIELDS: dict[str, str] = {
    "label": "keyword",
    "view": "keyword",
    "sex": "keyword",
    "modality": "keyword",
    "body_part": "keyword",
    "source": "keyword",
    "origin_dataset": "keyword",
    "patient_hash": "keyword",
    "model_id": "keyword",
    "study_uid": "keyword",
    "series_uid": "keyword",
    "sop_uid": "keyword",
    "age": "integer",
    "source_ref": "keyword",  # a changed file's earlier point is found by it (services.pipeline.stages)
}

COLLECTION_NAME_MAX = 64  # collection names are directory names in the embedded store; see check_name
_NAME_RE = re.compile(rf"[A-Za-z0-9_-]{{1,{COLLECTION_NAME_MAX}}}")
_WRONG_MODEL = "Use the model the collection was built with, or index into a new collection."

FilterValue = str | int


@dataclass(frozen=True)
class PointRecord:
    """One stored image: a UUID string id, its embedding (None when not fetched) and its payload."""

    id: str
    vector: np.ndarray | None
    payload: dict[str, Any]


@dataclass(frozen=True)
class Hit:
    """One search result; `score` is the cosine similarity (higher is nearer)."""

    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class CollectionInfo:
    """A collection's name, vector size and point count."""

    name: str
    dim: int
    count: int


def _values(key: str, raw: Sequence[FilterValue] | FilterValue) -> tuple[FilterValue, ...]:
    # A bare string is a Sequence too; treating "covid" as ("c", "o", ...) would silently match nothing.
    items = (raw,) if isinstance(raw, str | int) else tuple(raw)
    integer = INDEXED_FIELDS.get(key) == "integer"
    out: list[FilterValue] = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, str | int):
            raise StoreError(f"filter on {key!r}: value {v!r} is not a string or an integer")
        if integer and isinstance(v, str):
            try:  # CLI filters arrive as text; the age field is stored as an integer ("90+" names the top band)
                v = filter_age(v) if key == "age" else int(v)
            except ValueError:
                raise StoreError(f"filter on {key!r}: {v!r} is not an integer") from None
        out.append(v)
    if len({type(v) for v in out}) > 1:
        raise StoreError(f"filter on {key!r} mixes strings and integers: {list(out)!r}")
    if key == "age" and out:  # ages of 90 and over are one band (services.ages)
        return age_filter_values(int(v) for v in out)
    return tuple(out)


@dataclass(frozen=True)
class SearchFilter:
    """Restrict a search. `must`: each field takes any of its values, fields AND together; `must_not`: none of
    the values; `exclude_ids`: drop these points (e.g. the query image itself).

    Values are normalised on construction: a bare value becomes a 1-tuple; integer fields accept digit
    strings.
    """

    must: Mapping[str, Sequence[FilterValue]] = field(default_factory=dict)
    must_not: Mapping[str, Sequence[FilterValue]] = field(default_factory=dict)
    exclude_ids: Sequence[str] = ()

    def __post_init__(self) -> None:
        must = {k: _values(k, v) for k, v in self.must.items()}
        empty = [k for k, v in must.items() if not v]
        if empty:
            raise StoreError(f"filter field(s) {empty} have no allowed values, so nothing could match")
        must_not = {k: v for k, v in ((k, _values(k, v)) for k, v in self.must_not.items()) if v}
        ids = (self.exclude_ids,) if isinstance(self.exclude_ids, str) else tuple(self.exclude_ids)
        object.__setattr__(self, "must", must)
        object.__setattr__(self, "must_not", must_not)
        object.__setattr__(self, "exclude_ids", tuple(check_ids(ids)))

    @property
    def is_empty(self) -> bool:
        return not (self.must or self.must_not or self.exclude_ids)

    @property
    def restricts(self) -> bool:
        """True when it keeps only the points with given values (`must`), not nearly all of them (exclusions)."""
        return bool(self.must)


class VectorStore(Protocol):
    """What the pipeline needs from a vector store. Vectors are compared by cosine similarity."""

    def create_collection(self, name: str, dim: int) -> None:
        """Create `name` for `dim`-sized vectors with the INDEXED_FIELDS payload indexes; idempotent for the
        same dim, StoreError for a different one."""
        ...

    def has_collection(self, name: str) -> bool: ...

    def collections(self) -> list[CollectionInfo]: ...

    def delete_collection(self, name: str) -> None: ...

    def upsert(self, name: str, points: Sequence[PointRecord], *, flush: bool = True) -> None:
        """Insert or replace points by id (re-indexing an image does not duplicate it). They are durable when
        it returns, unless `flush=False`: then only after the next `flush(name)` (a writer that batches its
        flushes marks its work done only after that)."""
        ...

    def flush(self, name: str) -> None:
        """Make every point upserted into `name` so far durable (the embedded store syncs its files; a server
        persists by itself, so there it does nothing)."""
        ...

    def existing_ids(self, name: str, ids: Sequence[str]) -> set[str]:
        """The subset of `ids` already stored (lets ingest skip work it has done)."""
        ...

    def search(
        self,
        name: str,
        vector: np.ndarray,
        k: int,
        flt: SearchFilter | None = None,
        *,
        hnsw_ef: int | None = None,
    ) -> list[Hit]:
        """The `k` nearest points to `vector`, nearest first."""
        ...

    def search_batch(
        self,
        name: str,
        vectors: np.ndarray,
        k: int,
        filters: Sequence[SearchFilter | None] | None = None,
    ) -> list[list[Hit]]:
        """`search` for each row of `vectors` (with the matching filter), in one engine call."""
        ...

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
        """The best hit of each of the `k` nearest groups (points sharing a value of `group_by`), nearest first;
        a point without the field is a group of its own. Grouped in the store, so a page is full whenever the
        collection holds `k` groups."""
        ...

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
        """More like `positive`, less like `negative` (stored point ids; Qdrant's best-score recommend). The
        examples themselves are never returned. Scores are the engine's recommend scores, not cosines:
        0.5 + 0.5 s / (1 + |s|) of the best positive cosine s when it beats the best negative one, negative
        otherwise. PointNotFoundError names examples that are not stored. `group_by` as in `search_groups`."""
        ...

    def retrieve(self, name: str, ids: Sequence[str], *, with_vectors: bool = False) -> list[PointRecord]:
        """Stored points by id, in the order given; missing ids are left out."""
        ...

    def scroll(
        self, name: str, *, batch: int = 1000, with_vectors: bool = False, flt: SearchFilter | None = None
    ) -> Iterator[PointRecord]:
        """Every point of the collection (or those `flt` keeps), fetched `batch` at a time."""
        ...

    def delete_points(self, name: str, ids: Sequence[str], *, flush: bool = True) -> None:
        """Remove points by id (missing ones are ignored); durable when it returns unless `flush=False`."""
        ...

    def count(self, name: str) -> int: ...

    def facet(self, name: str, key: str, *, limit: int = 1000) -> list[tuple[str | int, int]]:
        """Exact counts of the values of the indexed payload field `key` (INDEXED_FIELDS), most frequent first, at
        most `limit` values; points without the field are not counted. Read from the payload index, not a scan."""
        ...

    def unindexed_count(self, name: str) -> int:
        """Points not yet in an HNSW graph, so searched exactly. The embedded store's index writer calls
        `optimize` once this reaches Settings.index_threshold_points; a server indexes them by itself."""
        ...

    def optimize(self, name: str) -> None:
        """Build the HNSW index now (blocking in the embedded engine; the server indexes in background)."""
        ...

    def close(self) -> None: ...


# ----------------------------------------------------------------------------------------------------------
# Checks shared by the adapters, so that both refuse the same inputs with the same messages.


def check_name(name: str) -> str:
    """Collection names become directory names in the embedded store: allow [A-Za-z0-9_-]{1,64} only."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise StoreError(
            f"invalid collection name {name!r}: use 1-{COLLECTION_NAME_MAX} characters from A-Z, a-z, 0-9, '_' and '-'",
            "Pick a plain name such as 'cxr' or 'cxr_vit-small'.",
        )
    return name


def check_dim(dim: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
        raise StoreError(f"invalid vector size {dim!r}: it must be a positive integer")
    return int(dim)


def check_same_dim(name: str, have: int, dim: int) -> None:
    """create_collection of an existing collection: StoreError unless it holds `dim`-d vectors, as asked."""
    if have != dim:
        raise StoreError(
            f"collection {name!r} exists with {have}-d vectors, not {dim}-d",
            "Use a new collection name for a model with another embedding size.",
        )


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise StoreError(f"invalid k {k!r}: ask for at least one neighbour")
    return int(k)


def check_ids(ids: Sequence[str]) -> list[str]:
    """Point ids are UUID strings; return them in canonical form (lower case, hyphenated)."""
    out = []
    for pid in ids:
        try:
            out.append(str(uuid.UUID(str(pid))))
        except ValueError:
            raise StoreError(f"point id {pid!r} is not a UUID string; build ids with point_id()") from None
    return out


def as_matrix(name: str, vectors: np.ndarray, dim: int) -> np.ndarray:
    """`vectors` as a C-contiguous float32 (n, dim) array; StoreError for a wrong size, NaN/inf or zeros."""
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        got = arr.shape[-1] if arr.ndim >= 1 else 0
        raise StoreError(
            f"collection {name!r} holds {dim}-d vectors, got {got}-d (shape {tuple(np.shape(vectors))})", _WRONG_MODEL
        )
    if not np.isfinite(arr).all():
        raise StoreError(f"vectors for collection {name!r} contain NaN or infinity; check the encoder output")
    if arr.size and not np.linalg.norm(arr, axis=1).all():
        raise StoreError(f"a vector for collection {name!r} is all zeros; cosine similarity is undefined for it")
    return np.ascontiguousarray(arr)


def as_vector(name: str, vector: np.ndarray, dim: int) -> np.ndarray:
    """One query vector as float32 (dim,); see `as_matrix`."""
    arr = np.asarray(vector)
    if arr.ndim != 1:
        raise StoreError(f"a query vector must be 1-d, got shape {arr.shape}; use search_batch for several")
    return as_matrix(name, arr, dim)[0]


def check_points(name: str, points: Sequence[PointRecord], dim: int) -> tuple[list[str], np.ndarray]:
    """Canonical ids and the stacked vectors of `points`; every point must carry a vector."""
    missing = [p.id for p in points if p.vector is None]
    if missing:
        raise StoreError(f"{len(missing)} point(s) for {name!r} have no vector, e.g. {missing[0]}")
    ids = check_ids([p.id for p in points])
    rows = [np.asarray(p.vector) for p in points]
    for pid, row in zip(ids, rows, strict=True):
        if row.ndim != 1 or row.shape[0] != dim:
            raise StoreError(
                f"collection {name!r} holds {dim}-d vectors, got shape {row.shape} for point {pid}", _WRONG_MODEL
            )
    if not rows:
        return ids, np.empty((0, dim), dtype=np.float32)
    return ids, as_matrix(name, np.stack(rows), dim)


def check_filters(filters: Sequence[SearchFilter | None] | None, n: int) -> list[SearchFilter | None]:
    if filters is None:
        return [None] * n
    filters = list(filters)
    if len(filters) != n:
        raise StoreError(f"search_batch got {n} vectors but {len(filters)} filters; pass one per vector")
    return filters


def check_batch(
    name: str, vectors: np.ndarray, dim: int, k: int, filters: Sequence[SearchFilter | None] | None
) -> tuple[np.ndarray, int, list[SearchFilter | None]]:
    """search_batch()'s checked inputs: the queries as an (n, dim) matrix, k, and one filter (or None) per query."""
    matrix = as_matrix(name, vectors, dim)
    return matrix, check_k(k), check_filters(filters, len(matrix))


def _indexed_field(key: str, doing: str, hint: str) -> str:
    if key not in INDEXED_FIELDS:
        raise StoreError(
            f"cannot {doing} {key!r}: it is not an indexed payload field",
            f"{hint} one of: {', '.join(sorted(INDEXED_FIELDS))}.",
        )
    return key


def check_group_field(group_by: str) -> str:
    """Grouping needs an indexed keyword or integer field (the server refuses others)."""
    return _indexed_field(group_by, "group by", "Group by")


def check_facet_key(key: str) -> str:
    """Counting values needs an indexed payload field (the engine refuses others)."""
    return _indexed_field(key, "count the values of", "Count")


def check_examples(positive: Sequence[str], negative: Sequence[str]) -> tuple[list[str], list[str]]:
    """Canonical example ids for recommend: at least one positive, no id on both sides."""
    pos, neg = check_ids(list(positive)), check_ids(list(negative))
    if not pos:
        raise StoreError("recommend needs at least one positive example id")
    both = sorted(set(pos) & set(neg))
    if both:
        raise StoreError(f"point(s) {both} are both positive and negative examples")
    return list(dict.fromkeys(pos)), list(dict.fromkeys(neg))


def example_vectors(
    store: VectorStore, name: str, positive: Sequence[str], negative: Sequence[str], group_by: str | None
) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """recommend()'s checked inputs: every example id, and the stored vectors of the positives and negatives.
    PointNotFoundError names examples that are not stored."""
    pos, neg = check_examples(positive, negative)
    if group_by is not None:
        check_group_field(group_by)
    found = {r.id: r.vector for r in store.retrieve(name, pos + neg, with_vectors=True)}
    missing = [pid for pid in pos + neg if pid not in found]
    if missing:
        raise PointNotFoundError(f"example point(s) {missing} are not in collection {name!r}")
    return pos + neg, [found[p] for p in pos], [found[p] for p in neg]


def excluding(
    flt: SearchFilter | None, ids: Sequence[str] = (), values: Mapping[str, Sequence[FilterValue]] | None = None
) -> SearchFilter:
    """`flt` that also drops the points `ids` and every point whose field takes one of `values[field]`."""
    base = flt or SearchFilter()
    must_not = {k: list(v) for k, v in base.must_not.items()}
    for key, extra in (values or {}).items():
        must_not[key] = list(dict.fromkeys([*must_not.get(key, ()), *extra]))
    return SearchFilter(
        must=base.must, must_not=must_not, exclude_ids=tuple(dict.fromkeys([*base.exclude_ids, *check_ids(ids)]))
    )


def restore_ids(given: Sequence[str], found: set[str]) -> set[str]:
    """Map canonical ids found by the engine back to the spelling the caller used."""
    return {pid for pid, canon in zip(given, check_ids(given), strict=True) if canon in found}
