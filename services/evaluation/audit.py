"""Audits of a retrieval run: does it follow the disease or the source, and does the store agree with numpy?

In cxr-public the label is confounded with the source (Kermany pediatric films vs COVID-19 paper figures and
ICU films), so a model can score well by recognising the source. For each query we count, in its top k, the
share from the query's own source and the share with the query's own label, beside what a random ranking of
the same gallery would give. A same-source share far above its chance level, especially for items of another
label, means the ranking keys on the source. Age is the other confounder (pediatric Kermany films against adult
COVID-19 films), so we also count the share of the top k from the other age group, where both ages are known:
far below its chance level, the ranking sorts children from adults.

The store audit re-runs a sample of queries through the vector store's own filtered search, so the numbers
computed by exact numpy are known to describe what the deployed search returns.
"""

from __future__ import annotations

import numpy as np

from services.evaluation.types import RetrievalSet, Scored
from services.index import SearchFilter, VectorStore

ADULT_AGE = 18  # age groups: pediatric under 18, adult from 18
# Each share of the top k beside its chance level (the eligible gallery's make-up).
AUDIT_PAIRS = (
    ("same_source", "chance_same_source"),
    ("same_label", "chance_same_label"),
    ("same_source_other_label", "chance_same_source_other_label"),
    ("other_age_group", "chance_other_age_group"),
)
AUDIT_FIELDS = tuple(field for pair in AUDIT_PAIRS for field in pair)
AGE_FIELDS = ("other_age_group", "chance_other_age_group")  # over queries with a known age only


def age_groups(ages: np.ndarray | None, n: int) -> np.ndarray:
    """Age group codes: 0 pediatric (< ADULT_AGE), 1 adult, -1 unknown (NaN or no ages at all)."""
    if ages is None:
        return np.full(n, -1, dtype=np.int8)
    ages = np.asarray(ages, dtype=np.float64)
    return np.where(np.isnan(ages), -1, (ages >= ADULT_AGE).astype(np.int8)).astype(np.int8)


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
    query_ages: np.ndarray | None = None,
    gallery_ages: np.ndarray | None = None,
) -> dict:
    """Per-query top-k shares from the query's source, label and age group, averaged overall, per class and
    per (label, source), each beside its chance level.

    `order` (Q, N) is the ranking from `rank_relevance`; gallery items of the query's own patient are skipped,
    so the top k are the first k items that were eligible. Chance shares are the eligible gallery's make-up.
    `other_age_group` is the share of the top k of known age that is of the other age group (pediatric < 18,
    adult >= 18); it and its chance are averaged over the queries with a known age and a known-age item in the
    top k (`n_queries_with_age`), and are None when there are none. Returns {"k", "adult_age", "n_gallery",
    "n_gallery_with_age", "overall":
    {field: mean, "n_queries", "n_queries_with_age"}, "per_class": {label: {...}}, "per_source": {label:
    {source: {...}}}}.
    """
    q_labels = np.asarray(query_labels).astype(str)
    q_src_names = np.asarray(query_sources).astype(str)
    q_lab, g_labels = _codes(q_labels, gallery_labels)
    q_sources, g_sources = _codes(query_sources, gallery_sources)
    q_groups, g_groups = _codes(query_groups, gallery_groups)
    q_age = age_groups(query_ages, len(q_labels))
    g_age = age_groups(gallery_ages, len(g_labels))
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
        "chance_same_source": (src_all & eligible).sum(axis=1) / denom,
        "same_label": (same_lab & in_top).sum(axis=1) / kept,
        "chance_same_label": (lab_all & eligible).sum(axis=1) / denom,
        "same_source_other_label": (same_src & ~same_lab & in_top).sum(axis=1) / kept,
        "chance_same_source_other_label": (src_all & ~lab_all & eligible).sum(axis=1) / denom,
    }
    per_query.update(_age_shares(top, in_top, eligible, q_age, g_age))
    return {
        "k": int(k),
        "adult_age": ADULT_AGE,
        "n_gallery": int(len(g_age)),
        "n_gallery_with_age": int((g_age >= 0).sum()),
        "overall": _means(per_query, np.ones(len(q_labels), dtype=bool)),
        "per_class": {cls: _means(per_query, q_labels == cls) for cls in sorted(set(q_labels.tolist()))},
        "per_source": {
            cls: {
                src: _means(per_query, (q_labels == cls) & (q_src_names == src))
                for src in sorted(set(q_src_names[q_labels == cls].tolist()))
            }
            for cls in sorted(set(q_labels.tolist()))
        },
    }


def _age_shares(
    top: np.ndarray, in_top: np.ndarray, eligible: np.ndarray, q_age: np.ndarray, g_age: np.ndarray
) -> dict[str, np.ndarray]:
    """Per query: the share of the known-age top k from the other age group, and the same share in the
    known-age eligible gallery; NaN where the query's age, or every top-k age, is unknown."""
    q_known = q_age[:, None] >= 0
    top_known = in_top & (g_age[top] >= 0) & q_known
    top_other = top_known & (g_age[top] != q_age[:, None])
    all_known = eligible & (g_age[None, :] >= 0) & q_known
    all_other = all_known & (g_age[None, :] != q_age[:, None])
    n_top, n_all = top_known.sum(axis=1), all_known.sum(axis=1)
    defined = n_top > 0  # then n_all > 0 too: the top k are eligible gallery items
    share = np.full(len(q_age), np.nan)
    chance = np.full(len(q_age), np.nan)
    share[defined] = top_other.sum(axis=1)[defined] / n_top[defined]
    chance[defined] = all_other.sum(axis=1)[defined] / n_all[defined]
    return {"other_age_group": share, "chance_other_age_group": chance}


def _codes(query: np.ndarray, gallery: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shared integer codes for two string arrays, so (Q, N) comparisons are on ints, not strings."""
    q = np.asarray(query).astype(str)
    _, inverse = np.unique(np.concatenate([q, np.asarray(gallery).astype(str)]), return_inverse=True)
    return inverse[: len(q)], inverse[len(q) :]


def _means(per_query: dict[str, np.ndarray], mask: np.ndarray) -> dict:
    """Mean of each share over the masked queries; the age shares over those with a defined value (else None)."""
    out: dict[str, float | int | None] = {}
    for name, values in per_query.items():
        chosen = values[mask]
        if name in AGE_FIELDS:
            chosen = chosen[np.isfinite(chosen)]
            out[name] = float(chosen.mean()) if len(chosen) else None
        else:
            out[name] = float(chosen.mean()) if len(chosen) else 0.0
    out["n_queries"] = int(mask.sum())
    out["n_queries_with_age"] = int(np.isfinite(per_query["other_age_group"][mask]).sum())
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
