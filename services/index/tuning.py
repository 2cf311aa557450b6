"""How the vector index is built and searched, in engine-neutral terms (points, not kilobytes).

Qdrant sizes its segments and its indexing threshold in KB of vector data; cxr counts points, which is what the
index writer sees. A point of a `dim`-d float32 vector takes `4 * dim` bytes, so N points are
`N * dim * 4 / 1024` KB. Measured choices and their reasons: docs/scaling.md and benchmarks/store_scale.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.errors import ConfigError

if TYPE_CHECKING:
    from services.index.store import SearchFilter

# Qdrant's own defaults, used where a tuning leaves a graph parameter unset but sets another.
ENGINE_HNSW_M = 16
ENGINE_EF_CONSTRUCT = 100
ENGINE_FULL_SCAN_KB = 10_000


def points_to_kb(points: int, dim: int) -> int:
    """The engine's KB for `points` float32 vectors of `dim` components, rounded down, so that a segment of
    exactly `points` points reaches a threshold of this size (measured: 999 points stay plain, 1000 index)."""
    return max(1, points * dim * 4 // 1024)


@dataclass(frozen=True)
class SearchPlan:
    """How one search runs, in engine-neutral terms: `exact` scores every point that passes the filter; else the
    graph is walked with beam `hnsw_ef` (None: the engine's) and ACORN up to `acorn_max_selectivity` (0: off)."""

    exact: bool = False
    hnsw_ef: int | None = None
    acorn_max_selectivity: float = 0.0


@dataclass(frozen=True)
class IndexTuning:
    """Index build and search parameters; None leaves the engine's default.

    - `threshold_points`: a segment is HNSW-indexed by optimize() once it holds this many unindexed points;
      smaller ones are searched exactly. The index writer calls optimize() when `unindexed_count` reaches it.
    - `segment_points`: segments are merged only up to this many points, so a refresh rebuilds at most one
      segment of this size instead of the whole collection.
    - `hnsw_m`, `hnsw_ef_construct`: the graph's degree and build beam; they apply to new collections only
      (changing them on an existing shard would make its next optimize() rebuild every segment).
    - `hnsw_payload_m`: degree of the extra per-value graphs the engine builds for every indexed payload field
      (None: the same as m; 0: none). They multiply the build cost by the number of indexed values.
    - `merge_segments`: the engine merges segments only while there are more than this many (None: its
      default, about one per core); more lets refreshes add small segments and merge later.
    - `index_threads`: threads for one HNSW build (0 = one per core).
    - `search_hnsw_ef`: the search beam when a caller does not give one.
    - `exact_filter_max_points`: a filtered search whose filter keeps at most this many points (the engine's
      cardinality estimate, one index lookup: 0.04-0.05 ms at 1M, docs/scaling.md) scores every one of them
      (exact) instead of walking the graph (None: never), whatever the collection's size: its cost is bounded by
      this count, and its recall is 1.0. A filter value that follows the embedding defeats filtered HNSW, with or
      without ACORN (measured on the trained model's embeddings at 100k: label=pneumonia_bacterial from other
      labels' queries, recall@10 0.73 at any ef; exact 1.0, 5 ms CPU).
    - `label_parts`: new collections of the embedded store keep each label's points in a graph of their own, for
      up to this many labels (later labels, and points without one, share one more); 0: one graph for all. A label
      filter then searches one label's graph unfiltered: at 1M points 1.97 ms at recall@10 0.997, where one graph
      needs an exact scan for recall (22.9 ms; docs/scaling.md). Fixed per collection when it is created.
    - `label_parts_from`: labels get parts of their own only once the shared part holds this many points, so a small
      collection stays one graph (each part costs its own open, about 0.1 s, and its own search).
    - `acorn_max_selectivity`: filtered searches whose filter keeps at most this share of points use ACORN
      (two-hop graph expansion), which keeps recall where plain filtered HNSW loses it; 0 turns it off.
    """

    threshold_points: int | None = None
    segment_points: int | None = None
    hnsw_m: int | None = None
    hnsw_ef_construct: int | None = None
    hnsw_payload_m: int | None = None
    merge_segments: int | None = None
    index_threads: int = 0
    search_hnsw_ef: int | None = None
    acorn_max_selectivity: float = 0.0
    exact_filter_max_points: int | None = None
    label_parts: int = 0
    label_parts_from: int = 20_000

    def __post_init__(self) -> None:
        for key in (
            "threshold_points",
            "segment_points",
            "hnsw_m",
            "hnsw_ef_construct",
            "search_hnsw_ef",
            "exact_filter_max_points",
        ):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"index tuning: {key} must be a positive integer or unset, got {value!r}")
        for key in ("hnsw_payload_m", "merge_segments"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(f"index tuning: {key} must be 0 or more, or unset, got {value!r}")
        for key in ("label_parts", "label_parts_from"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"index tuning: {key} must be 0 or more, got {value!r}")
        if self.index_threads < 0:
            raise ConfigError(f"index tuning: index_threads must be 0 (auto) or more, got {self.index_threads}")
        if not 0.0 <= self.acorn_max_selectivity <= 1.0:
            raise ConfigError(
                f"index tuning: acorn_max_selectivity is a share of points in [0, 1], got {self.acorn_max_selectivity}"
            )
        if self.threshold_points and self.segment_points and self.threshold_points > self.segment_points:
            raise ConfigError(
                f"index tuning: threshold_points ({self.threshold_points}) exceeds segment_points "
                f"({self.segment_points})",
                "Index in refreshes smaller than one segment.",
            )

    def needs_matches(self, flt: SearchFilter | None) -> bool:
        """Whether deciding how to search with `flt` needs the number of points it keeps (`exact`)."""
        return self.exact_filter_max_points is not None and flt is not None and flt.restricts

    def exact(self, flt: SearchFilter | None, matches: int | None) -> bool:
        """Whether a search with `flt`, which keeps `matches` points, is exact (see `exact_filter_max_points`)."""
        limit = self.exact_filter_max_points
        return limit is not None and matches is not None and flt is not None and flt.restricts and matches <= limit

    def search_plan(
        self, flt: SearchFilter | None, matches: int | None, hnsw_ef: int | None = None
    ) -> SearchPlan | None:
        """How to search with `flt`, which keeps `matches` points: exact where `exact` says so, else the caller's
        beam or `search_hnsw_ef`, and ACORN for filtered searches when enabled. None leaves every engine default."""
        if self.exact(flt, matches):
            return SearchPlan(exact=True)
        ef = hnsw_ef or self.search_hnsw_ef
        acorn = self.acorn_max_selectivity if flt is not None and not flt.is_empty else 0.0
        if not ef and not acorn:
            return None
        return SearchPlan(hnsw_ef=ef, acorn_max_selectivity=acorn)

    @property
    def sets_graph(self) -> bool:
        """True when any HNSW build parameter differs from the engine default."""
        graph = (self.hnsw_m, self.hnsw_ef_construct, self.hnsw_payload_m)
        return any(v is not None for v in graph) or self.index_threads != 0
