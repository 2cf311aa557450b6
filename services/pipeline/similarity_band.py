"""What a similarity score means in one collection: its percentile among the collection's typical nearest-neighbour
scores, and a band a reader can take in at a glance.

A raw cosine of 0.96 says nothing by itself: a model may put every chest film above 0.95. So each collection is
calibrated once per state (name, model, point count within DRIFT): up to SAMPLE_SIZE points, drawn with a fixed
seed, are searched against the rest, each excluding itself and its own patient, and the top-1 scores make the
reference distribution.
A hit's percentile is the share of that distribution at or below its score; the bands cut it at the 5th, 50th and
95th percentiles:

- "very close": score >= p95 (closer than 95 % of films are to their nearest other-patient neighbour)
- "close":      p50 <= score < p95
- "typical":    p05 <= score < p50
- "distant":    score < p05 (less alike than nearly any film and its nearest neighbour: the query is unlike them)

A collection of fewer than MIN_POINTS points is not calibrated (`calibrate` returns None).
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from services.index import SearchFilter, VectorStore
from services.index.store import excluding

MIN_POINTS = 50  # below this the distribution is too thin to call anything typical
SAMPLE_SIZE = 300  # points searched to build the distribution
SEED = 0  # the sample is the same for the same collection state
BANDS: tuple[tuple[str, str], ...] = (("p95", "very close"), ("p50", "close"), ("p05", "typical"))
DISTANT = "distant"
BAND_NAMES: tuple[str, ...] = ("very close", "close", "typical", DISTANT)
_CACHE_SIZE = 16


@dataclass(frozen=True)
class Calibration:
    """The top-1 nearest-neighbour scores of `n` sampled points (sorted ascending) and their 5th, 50th and 95th
    percentiles."""

    n: int
    p05: float
    p50: float
    p95: float
    sample: tuple[float, ...]

    @classmethod
    def from_scores(cls, scores: list[float] | np.ndarray) -> Calibration:
        ordered = np.sort(np.asarray(scores, dtype=np.float64))
        p05, p50, p95 = (float(np.percentile(ordered, q)) for q in (5, 50, 95))
        return cls(len(ordered), p05, p50, p95, tuple(float(s) for s in ordered))

    def percentile(self, score: float) -> float:
        """0-100: the share of the sampled nearest-neighbour scores at or below `score`."""
        return 100.0 * bisect.bisect_right(self.sample, float(score)) / max(1, self.n)

    def band(self, score: float) -> tuple[float, str]:
        """(percentile 0-100, band name) of one score; see the module's cut-offs."""
        for attr, name in BANDS:
            if score >= getattr(self, attr):
                return round(self.percentile(score), 1), name
        return round(self.percentile(score), 1), DISTANT

    def summary(self) -> dict[str, float | int]:
        """The figures a client shows to say how the bands were made."""
        return {"n": self.n, "p05": round(self.p05, 6), "p50": round(self.p50, 6), "p95": round(self.p95, 6)}


# A calibration summarises a distribution: it is kept while the collection's point count stays within this share of
# the count it was made at, so a collection being filled is not recalibrated (a scroll and SAMPLE_SIZE searches) after
# every batch.
DRIFT = 0.05
_cache: OrderedDict[tuple[int, str, str | None], tuple[int, Calibration | None]] = OrderedDict()
_lock = threading.Lock()


def calibrate(
    store: VectorStore,
    collection: str,
    *,
    model_id: str | None = None,
    sample_size: int = SAMPLE_SIZE,
    seed: int = SEED,
    min_points: int = MIN_POINTS,
) -> Calibration | None:
    """The collection's calibration, computed once per (store, collection, model) and then cached while the point
    count stays within DRIFT of the count it was made at (and on the same side of `min_points`); None when it holds
    fewer than `min_points` points (or too few with another patient to compare with)."""
    count = store.count(collection)
    key = (id(store), collection, model_id)
    with _lock:
        cached = _cache.get(key)
        if cached is not None and _still_valid(cached[0], count, min_points):
            _cache.move_to_end(key)
            return cached[1]
    result = None if count < min_points else _compute(store, collection, count, sample_size, seed, min_points)
    with _lock:
        _cache[key] = (count, result)
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return result


def _still_valid(made_at: int, count: int, min_points: int) -> bool:
    if (made_at < min_points) != (count < min_points):
        return False
    return abs(count - made_at) <= DRIFT * made_at


def _compute(
    store: VectorStore, collection: str, count: int, sample_size: int, seed: int, min_points: int
) -> Calibration | None:
    # Ids in scroll order (the store's own, stable for a state), then a seeded draw among them.
    ids = [r.id for r in store.scroll(collection, batch=2000)]
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(ids), size=min(sample_size, len(ids)), replace=False).tolist())
    records = store.retrieve(collection, [ids[i] for i in picked], with_vectors=True)
    records = [r for r in records if r.vector is not None]
    if not records:
        return None
    filters: list[SearchFilter | None] = []
    for rec in records:
        patient = rec.payload.get("patient_hash")
        filters.append(excluding(None, [rec.id], {"patient_hash": [patient]} if patient else None))
    vectors = np.stack([np.asarray(r.vector, dtype=np.float32) for r in records])
    scores = [hits[0].score for hits in store.search_batch(collection, vectors, 1, filters) if hits]
    if len(scores) < min(min_points, sample_size):
        return None
    return Calibration.from_scores(scores)


def clear_cache() -> None:
    """Forget every calibration (after points were removed and re-added to the same count, say)."""
    with _lock:
        _cache.clear()
