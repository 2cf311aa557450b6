"""Score a retrieval: rank the whole gallery for every query (exact cosine, own patient excluded) and compute
every reported metric per query, summarised with bootstrap CIs and audited for the source shortcut.

`score_retrieval` takes embeddings directly, so `cxr eval` (gallery read back from the store) and the ablation
benchmark (embeddings in memory) score with exactly the same definitions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.errors import DataError
from services.evaluation.audit import shortcut_audit
from services.evaluation.baselines import LENIENT_K
from services.evaluation.metrics import (
    average_precision,
    hit_at_k,
    lenient_map_at_k,
    map_at_r,
    precision_at_k,
    r_precision,
    recall_at_k,
    valid_queries,
)
from services.evaluation.ranking import rank_relevance, tie_break_keys
from services.evaluation.summary import summarize
from services.evaluation.types import RetrievalSet, Scored

AUDIT_K = 10


def per_query_metrics(rel: np.ndarray, n_relevant: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Every reported metric per query, keyed "map", "map_at_r", "r_precision", "precision_at_<k>", ..."""
    out = {
        "map": average_precision(rel, n_relevant),
        "map_at_r": map_at_r(rel, n_relevant),
        "r_precision": r_precision(rel, n_relevant),
    }
    for k in ks:
        out[f"precision_at_{k}"] = precision_at_k(rel, k)
        out[f"recall_at_{k}"] = recall_at_k(rel, n_relevant, k)
        out[f"hit_at_{k}"] = hit_at_k(rel, k)
    out[f"lenient_map_at_{LENIENT_K}"] = lenient_map_at_k(rel, min(LENIENT_K, rel.shape[1]))
    return out


def score_retrieval(
    query: RetrievalSet,
    gallery: RetrievalSet,
    *,
    ks: Sequence[int],
    n_boot: int = 1000,
    seed: int = 0,
    min_class_queries: int = 1,
) -> Scored:
    """Rank the whole gallery for each query (exact cosine, own patient excluded) and score it.

    Equal scores are ordered by a hash of (seed, gallery id), not by gallery position. Queries with no
    relevant gallery item (R = 0) have no defined AP; they are dropped from the metrics. The bootstrap resamples
    patients (`query.groups`); the summary holds a per (label, source) block. The macro mean counts the classes
    with at least `min_class_queries` scored queries.
    """
    if len(gallery.labels) < max(ks):
        raise DataError(f"the gallery has {len(gallery.labels)} images, fewer than k={max(ks)}")
    if not len(query.labels):
        raise DataError("there are no queries to score", hint="Check the query manifest and the leak exclusion.")
    order, rel, n_rel = rank_relevance(
        query.emb,
        gallery.emb,
        query.labels,
        gallery.labels,
        query.groups,
        gallery.groups,
        tie_keys=tie_break_keys(gallery.tie_ids, seed),
    )
    n_eligible = (query.groups[:, None] != gallery.groups[None, :]).sum(axis=1)
    valid = valid_queries(n_rel)
    if not valid.any():
        raise DataError("no query has a relevant gallery image", hint="Check the split and the labels.")
    per_query = per_query_metrics(rel[valid], n_rel[valid], ks)
    summary = summarize(
        per_query,
        query.labels[valid],
        groups=query.groups[valid],
        sources=query.sources[valid],
        n_boot=n_boot,
        seed=seed,
        min_class_queries=min_class_queries,
    )
    audit = shortcut_audit(
        order[valid],
        query.labels[valid],
        query.sources[valid],
        query.groups[valid],
        gallery.labels,
        gallery.sources,
        gallery.groups,
        k=AUDIT_K,
        query_ages=query.ages[valid],
        gallery_ages=gallery.ages,
    )
    return Scored(order, rel, n_rel, n_eligible, valid, per_query, summary, audit, queries=query)
