"""Audits of a retrieval run: does it follow the disease or the source, and does the store agree with numpy?

In cxr-public the label is confounded with the source (Kermany pediatric films vs COVID-19 paper figures and
ICU films), so a model can score well by recognising the source. For each query we count, in its top k, the
share from the query's own source and the share with the query's own label, beside what a random ranking of
the same gallery would give. A same-source share far above its chance level, especially for items of another
label, means the ranking keys on the source.

The store audit re-runs a sample of queries through the vector store's own filtered search, so the numbers
computed by exact numpy are known to describe what the deployed search returns.
"""

from __future__ import annotations

import numpy as np

from services.evaluation.types import RetrievalSet, Scored
from services.index import SearchFilter, VectorStore

AUDIT_FIELDS = (
    "same_source",
    "same_label",
    "same_source_other_label",
    "chance_same_source",
    "chance_same_label",
)


def shortcut_audit(
    order: np.ndarray,
    query_labels: np.ndarray,
    query_sources: np.ndarray,
    query_groups: np.ndarray,
    gallery_labels: np.ndarray,
    gallery_sources: np.ndarray,
    gallery_groups: np.ndarray,
    *,
    k: int = 10,
) -> dict:
    """Per-query top-k shares from the query's source and label, averaged overall and per class.

    `order` (Q, N) is the ranking from `rank_relevance`; gallery items of the query's own patient are skipped,
    so the top k are the first k items that were eligible. Chance shares are the eligible gallery's make-up.
    Returns {"k", "overall": {field: mean, "n_queries"}, "per_class": {label: {...}}}.
    """
    q_labels = np.asarray(query_labels).astype(str)
    q_lab, g_labels = _codes(q_labels, gallery_labels)
    q_sources, g_sources = _codes(query_sources, gallery_sources)
    q_groups, g_groups = _codes(query_groups, gallery_groups)
    eligible = q_groups[:, None] != g_groups[None, :]  # (Q, N) in gallery order
    n_eligible = eligible.sum(axis=1)
    ranked_ok = np.take_along_axis(eligible, order, axis=1)
    # Excluded items sit at the end of each ranking, so the eligible top k are the first min(k, n) positions.
    top = order[:, : min(k, order.shape[1])]
    in_top = ranked_ok[:, : top.shape[1]]
    kept = np.maximum(in_top.sum(axis=1), 1)
    same_src = g_sources[top] == q_sources[:, None]
    same_lab = g_labels[top] == q_lab[:, None]
    src_all = g_sources[None, :] == q_sources[:, None]
    lab_all = g_labels[None, :] == q_lab[:, None]
    denom = np.maximum(n_eligible, 1)
    per_query = {
        "same_source": (same_src & in_top).sum(axis=1) / kept,
        "same_label": (same_lab & in_top).sum(axis=1) / kept,
        "same_source_other_label": (same_src & ~same_lab & in_top).sum(axis=1) / kept,
        "chance_same_source": (src_all & eligible).sum(axis=1) / denom,
        "chance_same_label": (lab_all & eligible).sum(axis=1) / denom,
    }
    return {
        "k": int(k),
        "overall": _means(per_query, np.ones(len(q_labels), dtype=bool)),
        "per_class": {cls: _means(per_query, q_labels == cls) for cls in sorted(set(q_labels.tolist()))},
    }


def _codes(query: np.ndarray, gallery: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shared integer codes for two string arrays, so (Q, N) comparisons are on ints, not strings."""
    q = np.asarray(query).astype(str)
    _, inverse = np.unique(np.concatenate([q, np.asarray(gallery).astype(str)]), return_inverse=True)
    return inverse[: len(q)], inverse[len(q) :]


def _means(per_query: dict[str, np.ndarray], mask: np.ndarray) -> dict:
    out: dict[str, float | int] = {
        name: float(values[mask].mean()) if mask.any() else 0.0 for name, values in per_query.items()
    }
    out["n_queries"] = int(mask.sum())
    return out


def store_agreement(
    store: VectorStore,
    collection: str,
    query: RetrievalSet,
    gallery: RetrievalSet,
    scored: Scored,
    *,
    n_ignored: int = 0,
    n_check: int = 20,
    k: int = 10,
    tol: float = 1e-4,
) -> dict:
    """Re-run ~`n_check` queries through the store's search (own patient filtered out) and compare its top k
    with the exact numpy ranking `scored.order`. A rank agrees when the ids match, or when the scores match
    within `tol` (a tie broken the other way). A query whose group starts with NUL has no known patient and
    gets no filter. `n_ignored` store points outside the gallery are fetched beyond k and dropped.
    """
    rows = np.flatnonzero(scored.valid)
    picks = np.unique(rows[np.linspace(0, len(rows) - 1, min(n_check, len(rows))).astype(int)]) if len(rows) else rows
    known = set(gallery.ids)
    agree, max_diff, mismatches = 0, 0.0, []
    for q in picks.tolist():
        own = str(query.groups[q])
        flt = None if own.startswith("\0") else SearchFilter(must_not={"patient_hash": [own]})
        hits = [h for h in store.search(collection, query.emb[q], k + n_ignored, flt) if h.id in known][:k]
        top = scored.order[q, : min(k, int(scored.n_eligible[q]))]
        np_scores = gallery.emb[top] @ query.emb[q]
        ok = len(hits) == len(top)
        for hit, idx, score in zip(hits, top.tolist(), np_scores.tolist(), strict=False):
            max_diff = max(max_diff, abs(hit.score - score))
            ok = ok and (hit.id == gallery.ids[idx] or abs(hit.score - score) <= tol)
        agree += int(ok)
        if not ok:
            mismatches.append(query.paths[q])
    n = len(picks)
    return {
        "k": k,
        "n_checked": int(n),
        "n_agree": int(agree),
        "rate": agree / n if n else 0.0,
        "max_abs_score_diff": float(max_diff),
        "tolerance": tol,
        "mismatched_queries": mismatches[:5],
    }
