"""Exact rankings: ties go by a seeded hash of the gallery id, never by gallery order."""

from __future__ import annotations

import numpy as np
import pytest

from services.evaluation.metrics import average_precision, expected_random_ap
from services.evaluation.ranking import rank_relevance, tie_break_keys
from services.evaluation.scoring import score_retrieval
from services.evaluation.types import RetrievalSet


def _collapsed(n_per_class: int = 60) -> tuple[RetrievalSet, RetrievalSet]:
    """A collapsed model: every embedding the same. The gallery is sorted by label, as paths usually are."""
    labels = np.array(["a"] * n_per_class + ["b"] * n_per_class)
    emb = np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (len(labels), 1))
    paths = tuple(f"images/{lab}/{i:03d}.png" for i, lab in enumerate(labels))
    gallery = RetrievalSet(emb, labels, np.array([f"g{i}" for i in range(len(labels))]), labels, paths)
    query = RetrievalSet(emb[:2], np.array(["a", "b"]), np.array(["q0", "q1"]), np.array(["a", "b"]), ("qa", "qb"))
    return query, gallery


def test_ties_do_not_follow_gallery_order() -> None:
    query, gallery = _collapsed()
    keys = tie_break_keys(gallery.paths, seed=0)
    order, rel, n_rel = rank_relevance(
        query.emb, gallery.emb, query.labels, gallery.labels, query.groups, gallery.groups, tie_keys=keys
    )
    assert not np.array_equal(order[0], np.arange(len(gallery.labels)))
    np.testing.assert_array_equal(order[0], np.argsort(keys))  # all scores equal: pure key order
    ap = average_precision(rel, n_rel)
    # Ordering by position would give class a AP = 1.0 and class b about 0.31; both must sit near chance.
    chance = expected_random_ap(np.array([60]), np.array([120]))[0]
    assert abs(ap[0] - chance) < 0.15 and abs(ap[1] - chance) < 0.15
    assert abs(ap[0] - ap[1]) < 0.2


def test_tie_order_is_seeded_and_reproducible() -> None:
    query, gallery = _collapsed()
    first = score_retrieval(query, gallery, ks=(1, 10), n_boot=10, seed=0).order
    again = score_retrieval(query, gallery, ks=(1, 10), n_boot=10, seed=0).order
    other = score_retrieval(query, gallery, ks=(1, 10), n_boot=10, seed=1).order
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    # The gallery's own order does not matter: reversing it gives the same ranking of the same items.
    rev = slice(None, None, -1)
    reversed_gallery = RetrievalSet(
        gallery.emb[rev], gallery.labels[rev], gallery.groups[rev], gallery.sources[rev], gallery.paths[::-1]
    )
    flipped = score_retrieval(query, reversed_gallery, ks=(1, 10), n_boot=10, seed=0).order
    n = len(gallery.labels)
    np.testing.assert_array_equal(n - 1 - flipped, first)


def test_distinct_scores_are_ranked_by_score_whatever_the_keys() -> None:
    rng = np.random.default_rng(0)
    g = rng.normal(size=(50, 8)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q = g[:5] + 0.1 * rng.normal(size=(5, 8)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    labels = np.array(["x"] * 50)
    order, _, _ = rank_relevance(q, g, labels[:5], labels, tie_keys=tie_break_keys([str(i) for i in range(50)], 3))
    np.testing.assert_array_equal(order, np.argsort(-(q @ g.T), axis=1))
    with pytest.raises(ValueError, match="tie_keys"):
        rank_relevance(q, g, labels[:5], labels, tie_keys=np.arange(3))
