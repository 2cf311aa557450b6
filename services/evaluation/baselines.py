"""Reference rows for a retrieval report: raw pixels and the exact chance level of every metric.

A learnt embedding only means something beside these. Raw pixels (downsampled, flattened, L2-normalised) show
what plain image similarity already retrieves, including any source shortcut; the chance row is the exact
expectation of each metric under a uniformly random ranking of the same gallery, with the query's own patient
removed, so it moves with class prevalence instead of being a fixed 1/classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache

import numpy as np

from services.evaluation.metrics import expected_random_ap
from services.evaluation.summary import summarize
from services.evaluation.types import Scored

RAW_PIXEL_SIZE = 32
LENIENT_K = 10  # the cut-off of the lenient AP@k/hits that prior work reported


def raw_pixel_embeddings(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32) grey images in [0, 1] -> (N, 1024) float32 unit vectors (flattened, L2-normalised).

    No mean-centring: this is the "raw pixels" baseline as defined, cosine on the plain thumbnails. An all-black
    image keeps a zero vector (ranked by gallery order), which no real radiograph produces.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3:
        raise ValueError(f"expected (N, S, S) images, got shape {images.shape}")
    flat = images.reshape(len(images), -1)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return np.divide(flat, norms, out=np.zeros_like(flat), where=norms > 0)


def _harmonic(n: np.ndarray) -> np.ndarray:
    n = np.asarray(n, dtype=np.int64)
    top = int(n.max()) if n.size else 0
    table = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, top + 1))])
    return table[n]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den > 0)
    return out


def expected_map_at_r(n_relevant: np.ndarray, n_gallery: np.ndarray) -> np.ndarray:
    """Exact E[MAP@R] of a random ranking: (H_R + (R - 1) / (N - 1) * (R - H_R)) / N; 0 where R == 0.

    Rank i is relevant with probability R/N and then holds 1 + (i - 1)(R - 1)/(N - 1) hits on average; summing
    precision@i over i <= R and dividing by R gives the formula.
    """
    r = np.asarray(n_relevant, dtype=np.float64)
    n = np.asarray(n_gallery, dtype=np.float64)
    h_r = _harmonic(r.astype(np.int64))
    value = _ratio(h_r + _ratio(np.maximum(r - 1, 0), n - 1) * (r - h_r), n)
    return np.where(r > 0, value, 0.0)


def expected_hit_at_k(n_relevant: np.ndarray, n_gallery: np.ndarray, k: int) -> np.ndarray:
    """Exact P(at least one relevant item in a random top k) = 1 - C(N - R, k) / C(N, k)."""
    return np.array(
        [
            1.0 - math.comb(n - r, k) / math.comb(n, k) if n >= k else float(r > 0)
            for r, n in _pairs(n_relevant, n_gallery)
        ]
    )


@cache
def _lenient_by_hits(k: int) -> tuple[float, ...]:
    """Mean lenient AP@k (AP over the hits, divided by the hits) over all top-k patterns with h hits, per h."""
    sums = [0.0] * (k + 1)
    counts = [0] * (k + 1)
    for mask in range(1 << k):
        hits, ap = 0, 0.0
        for rank in range(k):
            if mask >> rank & 1:
                hits += 1
                ap += hits / (rank + 1)
        sums[hits] += ap / hits if hits else 0.0
        counts[hits] += 1
    return tuple(s / c for s, c in zip(sums, counts, strict=True))


def expected_lenient_ap(n_relevant: np.ndarray, n_gallery: np.ndarray, k: int = 10) -> np.ndarray:
    """Exact E[lenient AP@k] of a random ranking: the hits h in the top k are hypergeometric and, given h,
    every placement is equally likely; a top k with no hit scores 0, as in `lenient_map_at_k`."""
    if not 1 <= k <= 16:
        raise ValueError(f"k={k}: the exact lenient expectation enumerates 2**k patterns; use k <= 16")
    by_hits = _lenient_by_hits(k)
    out = []
    for r, n in _pairs(n_relevant, n_gallery):
        kk = min(k, n)
        table = by_hits if kk == k else _lenient_by_hits(kk)
        total = math.comb(n, kk)
        out.append(sum(math.comb(r, h) * math.comb(n - r, kk - h) / total * table[h] for h in range(1, min(r, kk) + 1)))
    return np.array(out, dtype=np.float64)


def _pairs(n_relevant: np.ndarray, n_gallery: np.ndarray) -> list[tuple[int, int]]:
    r = np.asarray(n_relevant, dtype=np.int64)
    n = np.asarray(n_gallery, dtype=np.int64)
    if r.shape != n.shape or np.any(r < 0) or np.any(r > n):
        raise ValueError("need matching shapes and 0 <= n_relevant <= n_gallery")
    return [(int(a), int(b)) for a, b in zip(r.tolist(), n.tolist(), strict=True)]


def chance_per_query(n_relevant: np.ndarray, n_gallery: np.ndarray, ks: Sequence[int], lenient_k: int) -> dict:
    """Per-query expected value of every reported metric under a random ranking, keyed like the model's.

    `n_relevant` and `n_gallery` are R and N after removing the query's own patient. P@k and R-Precision
    expect R/N (the class prevalence), Recall@k expects k/N, full AP uses `expected_random_ap`.
    """
    r = np.asarray(n_relevant, dtype=np.int64)
    n = np.asarray(n_gallery, dtype=np.int64)
    prevalence = _ratio(r, n)
    out: dict[str, np.ndarray] = {
        "map": expected_random_ap(r, n),
        "map_at_r": expected_map_at_r(r, n),
        "r_precision": prevalence,
    }
    for k in ks:
        out[f"precision_at_{k}"] = prevalence
        out[f"recall_at_{k}"] = np.where(r > 0, _ratio(np.minimum(k, n), n), 0.0)
        out[f"hit_at_{k}"] = expected_hit_at_k(r, n, k)
    out[f"lenient_map_at_{lenient_k}"] = expected_lenient_ap(r, n, lenient_k)
    return out


def chance_summary(
    scored: Scored, labels: np.ndarray, *, ks: Sequence[int], n_boot: int, seed: int, min_class_queries: int = 1
) -> dict:
    """The chance row: every metric's random-ranking expectation per scored query, summarised like a method
    (same queries, same patient bootstrap, same macro classes, same per-source block when `scored.queries` is
    known), so its CIs reflect which queries and patients were drawn."""
    v = scored.valid
    per_query = chance_per_query(scored.n_relevant[v], scored.n_eligible[v], ks, LENIENT_K)
    queries = scored.queries
    return summarize(
        per_query,
        np.asarray(labels)[v],
        groups=None if queries is None else queries.groups[v],
        sources=None if queries is None else queries.sources[v],
        n_boot=n_boot,
        seed=seed,
        min_class_queries=min_class_queries,
    )
