"""Exact rankings of a gallery for each query, with same-patient (and self) items removed."""

from __future__ import annotations

import numpy as np


def rank_relevance(
    query_emb: np.ndarray,
    gallery_emb: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    query_groups: np.ndarray | None = None,
    gallery_groups: np.ndarray | None = None,
    *,
    chunk: int = 512,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rank the whole gallery by cosine for each query.

    Items whose group (patient hash) equals the query's are excluded: they are moved behind every other item and
    never count as relevant, and R counts only the remaining relevant items. Returns (order (Q,N) gallery indices,
    rel (Q,N) bool, n_relevant (Q,)). Embeddings must be L2-normalised.
    """
    q_labels = np.asarray(query_labels)
    g_labels = np.asarray(gallery_labels)
    n_q, n_g = len(query_emb), len(gallery_emb)
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
        # stable sort on -sim: ties keep gallery order, so results are reproducible
        idx = np.argsort(-sim, axis=1, kind="stable")
        order[start:stop] = idx
        rel[start:stop] = np.take_along_axis(same, idx, axis=1)
        n_rel[start:stop] = same.sum(axis=1)
    return order, rel, n_rel
