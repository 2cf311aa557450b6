"""What a collection holds, field by field: the values of label, source, view and sex with their counts (most
frequent first), and how many films have no age. Pickers are filled from it and filters are resolved against it
(services.pipeline.filters.resolve_filters).

Counted from the store's payload indexes (VectorStore.facet: exact counts, no scan of the payloads), then cached
per (store, collection, point count): a search asks for it on every request, and it changes only when points are
added or removed.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from services.index import VectorStore

FACET_FIELDS: tuple[str, ...] = ("label", "source", "view", "sex")
_CACHE_SIZE = 16
_MAX_VALUES = 10_000  # distinct values counted per field (labels, sources, views, sexes, ages are far fewer)


@dataclass(frozen=True)
class Facets:
    """`fields[name]` is a list of (value, count), most frequent first (ties by value); `no_age` counts the points
    without an age."""

    collection: str
    total: int
    fields: dict[str, list[tuple[str, int]]]
    no_age: int

    def values(self, field: str) -> dict[str, int]:
        return dict(self.fields.get(field, []))

    def as_json(self) -> dict[str, object]:
        return {
            "collection": self.collection,
            "total": self.total,
            "fields": {f: [{"value": v, "count": c} for v, c in pairs] for f, pairs in self.fields.items()},
            "no_age": self.no_age,
        }


_cache: OrderedDict[tuple[int, str, int], Facets] = OrderedDict()
_lock = threading.Lock()


def collection_facets(store: VectorStore, collection: str) -> Facets:
    """The facets of `collection` (CollectionNotFoundError when it does not exist), cached per point count."""
    count = store.count(collection)
    key = (id(store), collection, count)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    # from the payload indexes (exact counts, no scan); ties by value, as a reader scans them
    fields = {
        f: sorted(((str(v), c) for v, c in store.facet(collection, f, limit=_MAX_VALUES) if str(v) != ""),
                  key=lambda kv: (-kv[1], kv[0]))
        for f in FACET_FIELDS
    }  # fmt: skip
    with_age = sum(c for _, c in store.facet(collection, "age", limit=_MAX_VALUES))
    total, no_age = count, max(0, count - with_age)
    facets = Facets(collection, total, fields, no_age)
    with _lock:
        _cache[key] = facets
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return facets


def resolve_in(store: VectorStore, collection: str, expressions: Sequence[str]) -> tuple[str, ...]:
    """`expressions` with the values of the faceted fields spelt as `collection` stores them (case ignored);
    UnknownValueError for a value no film there carries. The facets are read only when a faceted field is
    filtered on."""
    from services.pipeline.filters import resolve_filters, split_filter

    if not any(split_filter(expr)[0] in FACET_FIELDS for expr in expressions):
        return tuple(expressions)
    facets = collection_facets(store, collection)
    return resolve_filters(expressions, {f: facets.values(f) for f in FACET_FIELDS})
