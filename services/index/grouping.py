"""Group-by over ranked pages: for an engine without it (qdrant-edge 0.9.0), and merging for one with it (the
server leaves out points without the group field)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from services.errors import StoreError
from services.index.store import FilterValue, Hit, SearchFilter, excluding

PageFetch = Callable[[SearchFilter, int], list[Hit]]


def collect_groups(fetch: PageFetch, flt: SearchFilter | None, k: int, group_by: str) -> list[Hit]:
    """Group-by for an engine without it (qdrant-edge 0.9.0): fetch pages nearest first, each excluding the
    groups already taken (must_not on `group_by`), and keep the first hit of every new group.

    Exact: a group first seen at rank r of a page has that hit as its best among the points left, and a group
    not seen scores below the whole page. Each page yields at least one new group until the collection runs
    out, so it takes at most `k` engine calls (usually one or two).
    """
    chosen: list[Hit] = []
    taken_values: list[FilterValue] = []
    taken_ids: list[str] = []  # points without the field: groups of one
    while len(chosen) < k:
        want = min(max(2 * (k - len(chosen)), 16), 1000)
        page_filter = excluding(flt, taken_ids, {group_by: taken_values} if taken_values else {})
        hits = fetch(page_filter, want)
        seen = set(taken_values)
        for hit in hits:
            value = hit.payload.get(group_by)
            if value is None:
                taken_ids.append(hit.id)
            elif isinstance(value, str | int) and not isinstance(value, bool):
                if value in seen:
                    continue
                seen.add(value)
                taken_values.append(value)
            else:
                raise StoreError(f"point {hit.id} has a {type(value).__name__} in {group_by!r}; cannot group by it")
            chosen.append(hit)
            if len(chosen) == k:
                break
        if len(hits) < want:
            break
    return chosen


def merge_groups(grouped: Sequence[Hit], ungrouped: Sequence[Hit], k: int) -> list[Hit]:
    """The top `k` of the engine's group leaders and the points without the group field, by score."""
    return sorted([*grouped, *ungrouped], key=lambda h: -h.score)[:k]
