"""Per-query retrieval metrics over ranked relevance arrays, each named for exactly what it measures.

Every function takes `rel`, a boolean (Q, N) matrix: row q is the gallery ranked for query q (best first),
with the query's own patient already removed. `n_relevant` (Q,) is R, the number of relevant gallery items
for that query after the same exclusion. R may exceed N when the ranking was truncated: relevant items that
fell off the end count as never retrieved, so AP and recall are lower bounds. Queries with R == 0 have no
defined AP or recall: they score 0 here, and callers drop them with `valid_queries`.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "average_precision",
    "chance_map",
    "expected_random_ap",
    "hit_at_k",
    "lenient_map_at_k",
    "map_at_r",
    "precision_at_k",
    "r_precision",
    "recall_at_k",
    "relevance_from_labels",
    "valid_queries",
]


def _check_rel(rel: np.ndarray) -> np.ndarray:
    rel = np.asarray(rel)
    if rel.ndim != 2:
        raise ValueError(f"rel must be a (Q, N) matrix, got shape {rel.shape}")
    if rel.dtype != np.bool_:
        raise ValueError(f"rel must be boolean, got {rel.dtype}")
    return rel


def _check_r(rel: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    r = np.asarray(n_relevant)
    if r.shape != (rel.shape[0],):
        raise ValueError(f"n_relevant must have shape ({rel.shape[0]},), got {r.shape}")
    if not np.issubdtype(r.dtype, np.integer) and not np.all(r == np.round(r)):
        raise ValueError("n_relevant must hold whole numbers")
    r = r.astype(np.int64)
    if np.any(r < rel.sum(axis=1)):
        raise ValueError("n_relevant is smaller than the number of relevant items in the ranking")
    return r


def _check_k(rel: np.ndarray, k: int) -> int:
    if not 1 <= k <= rel.shape[1]:
        raise ValueError(f"k={k} must be between 1 and the ranking length {rel.shape[1]}")
    return int(k)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den as float64, 0 where den == 0 (no relevant items means no defined score)."""
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _precision_at_hits(rel: np.ndarray) -> np.ndarray:
    """precision@i at every rank i where the item is relevant, 0 elsewhere; shape (Q, N)."""
    ranks = np.arange(1, rel.shape[1] + 1, dtype=np.float64)
    return np.cumsum(rel, axis=1, dtype=np.float64) / ranks * rel


def valid_queries(n_relevant: np.ndarray) -> np.ndarray:
    """Mask of queries that have at least one relevant gallery item; only these have a defined AP/recall."""
    return np.asarray(n_relevant) > 0


def relevance_from_labels(ranked_labels: np.ndarray, query_labels: np.ndarray) -> np.ndarray:
    """Boolean relevance matrix: ranked_labels (Q, N) equals the query's own label (Q,)."""
    ranked_labels = np.asarray(ranked_labels)
    query_labels = np.asarray(query_labels)
    if ranked_labels.ndim != 2 or query_labels.shape != (ranked_labels.shape[0],):
        raise ValueError(f"shapes {ranked_labels.shape} and {query_labels.shape} are not (Q, N) and (Q,)")
    return ranked_labels == query_labels[:, None]


def average_precision(rel: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """Full AP: sum of precision@i at the relevant ranks, divided by R (all relevant items, not the hits)."""
    rel = _check_rel(rel)
    r = _check_r(rel, n_relevant)
    return _safe_div(_precision_at_hits(rel).sum(axis=1), r)


def map_at_r(rel: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """MAP@R (Musgrave et al. 2020): precision@i summed over relevant ranks within the top R, divided by R."""
    rel = _check_rel(rel)
    r = _check_r(rel, n_relevant)
    ranks = np.arange(1, rel.shape[1] + 1)
    within_r = ranks[None, :] <= r[:, None]
    return _safe_div((_precision_at_hits(rel) * within_r).sum(axis=1), r)


def r_precision(rel: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """R-Precision: relevant items among the top R, divided by R."""
    rel = _check_rel(rel)
    r = _check_r(rel, n_relevant)
    ranks = np.arange(1, rel.shape[1] + 1)
    hits = (rel & (ranks[None, :] <= r[:, None])).sum(axis=1)
    return _safe_div(hits, r)


def precision_at_k(rel: np.ndarray, k: int) -> np.ndarray:
    """P@k: relevant items among the top k, divided by k."""
    rel = _check_rel(rel)
    k = _check_k(rel, k)
    return rel[:, :k].sum(axis=1) / np.float64(k)


def recall_at_k(rel: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """True Recall@k: relevant items among the top k, divided by R (not a hit rate; see `hit_at_k`)."""
    rel = _check_rel(rel)
    r = _check_r(rel, n_relevant)
    k = _check_k(rel, k)
    return _safe_div(rel[:, :k].sum(axis=1), r)


def hit_at_k(rel: np.ndarray, k: int) -> np.ndarray:
    """Hit@k: 1 if any of the top k is relevant, else 0 (what prior work called "recall@k")."""
    rel = _check_rel(rel)
    k = _check_k(rel, k)
    return rel[:, :k].any(axis=1).astype(np.float64)


def lenient_map_at_k(rel: np.ndarray, k: int) -> np.ndarray:
    """LENIENT, for comparison with prior work only: AP@k divided by the hits in the top k, not by R.

    One lucky hit at rank 1 scores 1.0 however many relevant items were missed, so a near-random ranking
    scores high. Never report this as "mAP".
    """
    rel = _check_rel(rel)
    k = _check_k(rel, k)
    top = rel[:, :k]
    return _safe_div(_precision_at_hits(top).sum(axis=1), top.sum(axis=1))


def expected_random_ap(n_relevant: np.ndarray, n_gallery: np.ndarray) -> np.ndarray:
    """Exact expected full AP of a uniformly random ranking of N items of which R are relevant.

    E[AP] = (H_N + (R - 1) / (N - 1) * (N - H_N)) / N, with H_N the N-th harmonic number: each rank i is
    relevant with probability R/N and then holds 1 + (i - 1)(R - 1)/(N - 1) hits on average. It is close to,
    and a little above, the prevalence R/N. 0 where R == 0.
    """
    r = np.asarray(n_relevant, dtype=np.float64)
    n = np.asarray(n_gallery, dtype=np.float64)
    if np.any(r > n) or np.any(r < 0):
        raise ValueError("need 0 <= n_relevant <= n_gallery")
    max_n = int(n.max()) if n.size else 0
    table = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, max_n + 1))])
    harmonic = table[n.astype(np.int64)]
    slope = _safe_div(np.maximum(r - 1, 0), n - 1)
    value = _safe_div(harmonic + slope * (n - harmonic), n)
    return np.where(r > 0, value, 0.0)


def chance_map(
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    *,
    query_patients: np.ndarray | None = None,
    gallery_patients: np.ndarray | None = None,
) -> np.ndarray:
    """Per-query expected full AP of a random ranking, the "chance" row of a report.

    Uses the exact expectation (`expected_random_ap`) with R = gallery items of the query's label and N = the
    gallery size. Pass both patient arrays to drop the query's own patient from R and N first, as the real
    evaluation does.
    """
    query_labels = np.asarray(query_labels).astype(str)
    gallery_labels = np.asarray(gallery_labels).astype(str)
    if (query_patients is None) != (gallery_patients is None):
        raise ValueError("pass both query_patients and gallery_patients, or neither")
    r = _count_matches(gallery_labels, query_labels)
    n = np.full(len(query_labels), len(gallery_labels), dtype=np.int64)
    if query_patients is not None and gallery_patients is not None:
        g_p = np.asarray(gallery_patients).astype(str)
        q_p = np.asarray(query_patients).astype(str)
        # "\x1f" (unit separator) is absent from CSV ids and labels, so (patient, label) pairs stay distinct.
        g_pair = np.char.add(np.char.add(g_p, "\x1f"), gallery_labels)
        q_pair = np.char.add(np.char.add(q_p, "\x1f"), query_labels)
        n = n - _count_matches(g_p, q_p)
        r = r - _count_matches(g_pair, q_pair)
    return expected_random_ap(r, n)


def _count_matches(keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """For each query string, how many entries of `keys` equal it (vectorised via sorted unique keys)."""
    uniq, codes = np.unique(keys, return_inverse=True)
    if not len(uniq):
        return np.zeros(len(queries), dtype=np.int64)
    counts = np.bincount(codes, minlength=len(uniq))
    pos = np.clip(np.searchsorted(uniq, queries), 0, len(uniq) - 1)
    return np.where(uniq[pos] == queries, counts[pos], 0).astype(np.int64)
