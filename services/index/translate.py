"""cxr's plain types to and from the engines' models, the same way for both adapters.

qdrant-edge copies qdrant-client's model classes (same names, same keyword arguments) without sharing them, so
one function builds either engine's filter or search parameters from the module it is given (`qdrant_edge` or
`qdrant_client.models`), and one reads either engine's points and records back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from services.index.store import FilterValue, Hit, PointRecord, SearchFilter
from services.index.tuning import SearchPlan

HasId = Callable[[tuple[str, ...]], Any]  # the point-id condition: the one class whose arguments differ
Page = Callable[[Any], tuple[Sequence[Any], Any]]  # offset -> (records, next offset or None)


def engine_filter(flt: SearchFilter | None, models: ModuleType, has_id: HasId) -> Any | None:
    """SearchFilter -> the engine's Filter; None when it filters nothing."""
    if flt is None or flt.is_empty:
        return None

    def cond(key: str, values: Sequence[FilterValue]) -> Any:
        match = models.MatchValue(value=values[0]) if len(values) == 1 else models.MatchAny(any=list(values))
        return models.FieldCondition(key=key, match=match)

    must = [cond(k, v) for k, v in flt.must.items()]
    must_not = [cond(k, v) for k, v in flt.must_not.items()]
    if flt.exclude_ids:
        must_not.append(has_id(tuple(flt.exclude_ids)))
    return models.Filter(must=must or None, must_not=must_not or None)


def engine_search_params(plan: SearchPlan | None, models: ModuleType) -> Any | None:
    """IndexTuning.search_plan's choice -> the engine's SearchParams; None keeps the engine's defaults."""
    if plan is None:
        return None
    if plan.exact:
        return models.SearchParams(exact=True)
    acorn = plan.acorn_max_selectivity
    return models.SearchParams(
        hnsw_ef=plan.hnsw_ef, acorn=models.AcornSearchParams(enable=True, max_selectivity=acorn) if acorn else None
    )


def hits(points: Iterable[Any]) -> list[Hit]:
    """The engine's scored points as Hits, in its order."""
    return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]


def point_record(raw: Any) -> PointRecord:
    """One engine record (id, vector or None, payload) as a PointRecord with a float32 vector."""
    vector = None if raw.vector is None else np.asarray(raw.vector, dtype=np.float32)
    return PointRecord(str(raw.id), vector, dict(raw.payload or {}))


def in_order(ids: Sequence[str], records: Iterable[Any]) -> list[PointRecord]:
    """retrieve()'s answer: the engine's `records` in the order of the canonical `ids`, each once, missing ones
    left out."""
    by_id = {str(r.id): r for r in records}
    return [point_record(by_id[pid]) for pid in dict.fromkeys(ids) if pid in by_id]


def found_ids(ids: Sequence[str], fetch: Callable[[list[str]], Iterable[Any]], chunk: int = 1000) -> set[str]:
    """existing_ids()'s lookup: the canonical `ids` the engine holds, fetched `chunk` at a time."""
    found: set[str] = set()
    for i in range(0, len(ids), chunk):
        found.update(str(r.id) for r in fetch(list(ids[i : i + chunk])))
    return found


def scroll_records(page: Page) -> Iterator[PointRecord]:
    """Every record of a collection, one `page(offset)` call at a time, until the engine returns no offset."""
    offset: Any = None
    while True:
        records, offset = page(offset)
        for r in records:
            yield point_record(r)
        if offset is None:
            return
