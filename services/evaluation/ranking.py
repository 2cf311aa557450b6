"""Exact rankings of a gallery for each query, with same-patient (and self) items removed.

Equal scores are ordered by a seeded hash of each gallery item's id, never by gallery order: galleries are
often sorted by path, paths often begin with the label, and breaking ties by position would then favour one
class (a collapsed model, whose scores are all equal, would score well on the first class in the folder).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


def tie_break_keys(ids: Sequence[str], seed: int = 0) -> np.ndarray:
    """A 64-bit BLAKE2b hash of (seed, id) per gallery item: the order of items with equal scores."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(f"{seed}\0{i}".encode(), digest_size=8).digest(), "big") for i in ids],
        dtype=np.uint64,
    )


def rank_relevance(
    query_emb: np.ndarray,
    gallery_emb: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    query_groups: np.ndarray | None = None,
    gallery_groups: np.ndarray | None = None,
    *,
    tie_keys: np.ndarray | None = None,
    chunk: int = 512,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rank the whole gallery by cosine for each query.

    Items whose group (patient hash) equals the query's are excluded: they are moved behind every other item and
    never count as relevant, and R counts only the remaining relevant items. Ties go by `tie_keys` (one per
    gallery item, e.g. `tie_break_keys(ids, seed)`; default: a seeded random order of the positions). Returns
    (order (Q,N) gallery indices, rel (Q,N) bool, n_relevant (Q,)). Embeddings must be L2-normalised.
    """
    q_labels = np.asarray(query_labels)
    g_labels = np.asarray(gallery_labels)
    n_q, n_g = len(query_emb), len(gallery_emb)
    if tie_keys is None:
        tie_keys = np.random.default_rng(0).permutation(n_g)
    tie_keys = np.asarray(tie_keys)
    if tie_keys.shape != (n_g,):
        raise ValueError(f"tie_keys must have shape ({n_g},), got {tie_keys.shape}")
    # Permute the columns into tie-key order, sort stably by score, then map back: equal scores keep key order.
    by_key = np.argsort(tie_keys, kind="stable")
    order = np.empty((n_q, n_g), dtype=np.int64)
    rel = np.empty((n_q, n_g), dtype=bool)
    n_rel = np.empty(n_q, dtype=np.int64)
    g = np.asarray(gallery_emb, dtype=np.float32)
    for start in range(0, n_q, chunk):
        stop = min(start + chunk, n_q)
        sim = np.asarray(query_emb[start:stop], dtype=np.float32) @ g.T
        same = q_labels[start:stop, None] == g_labels[None, :]
        if query_groups is not None and gallery_groups is not None:
            excluded = np.asarray(query_groups)[start:stop, None] == np.asarray(gallery_groups)[None, :]
            sim = np.where(excluded, -np.inf, sim)
            same &= ~excluded
        idx = by_key[np.argsort(-sim[:, by_key], axis=1, kind="stable")]
        order[start:stop] = idx
        rel[start:stop] = np.take_along_axis(same, idx, axis=1)
        n_rel[start:stop] = same.sum(axis=1)
    return order, rel, n_rel
