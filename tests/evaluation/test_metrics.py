"""Retrieval metrics against slow obvious twins, hand-computed cases and pytorch-metric-learning."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.evaluation import metrics as m

# ---------------------------------------------------------------- slow, obvious twins (one query at a time)


def slow_ap(row: list[bool], r: int) -> float:
    if r == 0:
        return 0.0
    hits, total = 0, 0.0
    for i, is_rel in enumerate(row, start=1):
        if is_rel:
            hits += 1
            total += hits / i
    return total / r


def slow_map_at_r(row: list[bool], r: int) -> float:
    if r == 0:
        return 0.0
    hits, total = 0, 0.0
    for i, is_rel in enumerate(row[:r], start=1):
        if is_rel:
            hits += 1
            total += hits / i
    return total / r


def slow_r_precision(row: list[bool], r: int) -> float:
    return sum(row[:r]) / r if r else 0.0


def slow_precision_at_k(row: list[bool], k: int) -> float:
    return sum(row[:k]) / k


def slow_recall_at_k(row: list[bool], r: int, k: int) -> float:
    return sum(row[:k]) / r if r else 0.0


def slow_hit_at_k(row: list[bool], k: int) -> float:
    return 1.0 if any(row[:k]) else 0.0


def slow_lenient(row: list[bool], k: int) -> float:
    hits, total = 0, 0.0
    for i, is_rel in enumerate(row[:k], start=1):
        if is_rel:
            hits += 1
            total += hits / i
    return total / hits if hits else 0.0


def random_problem(seed: int, q: int, n: int, truncate: bool) -> tuple[np.ndarray, np.ndarray]:
    """Random rankings; with `truncate`, R counts relevant items beyond the N shown (R > N possible)."""
    rng = np.random.default_rng(seed)
    rel = rng.random((q, n)) < rng.uniform(0.0, 0.6, size=(q, 1))
    rel[0] = False  # always include an R == 0 query
    r = rel.sum(axis=1)
    if truncate:
        r = r + rng.integers(0, n + 3, size=q) * (r > 0)
    return rel, r


CASES = [(seed, q, n, trunc) for seed, (q, n) in enumerate([(1, 1), (5, 3), (20, 17), (40, 60)]) for trunc in (0, 1)]


@pytest.mark.parametrize(("seed", "q", "n", "truncate"), CASES)
def test_metrics_match_slow_twins(seed: int, q: int, n: int, truncate: int) -> None:
    rel, r = random_problem(seed, q, n, bool(truncate))
    rows = [list(map(bool, row)) for row in rel]
    pairs = list(zip(rows, r.tolist(), strict=True))
    np.testing.assert_allclose(m.average_precision(rel, r), [slow_ap(x, rr) for x, rr in pairs])
    np.testing.assert_allclose(m.map_at_r(rel, r), [slow_map_at_r(x, rr) for x, rr in pairs])
    np.testing.assert_allclose(m.r_precision(rel, r), [slow_r_precision(x, rr) for x, rr in pairs])
    for k in sorted({1, min(5, n), n}):
        np.testing.assert_allclose(m.precision_at_k(rel, k), [slow_precision_at_k(x, k) for x in rows])
        np.testing.assert_allclose(m.recall_at_k(rel, r, k), [slow_recall_at_k(x, rr, k) for x, rr in pairs])
        np.testing.assert_allclose(m.hit_at_k(rel, k), [slow_hit_at_k(x, k) for x in rows])
        np.testing.assert_allclose(m.lenient_map_at_k(rel, k), [slow_lenient(x, k) for x in rows])
    np.testing.assert_array_equal(m.valid_queries(r), r > 0)
    assert m.average_precision(rel, r).dtype == np.float64


def test_hand_computed_example() -> None:
    # Query A: ranking  R . R . .  (ranks 1 and 3 relevant), R = 3 (one relevant item never retrieved).
    #   AP       = (1/1 + 2/3) / 3                 = 5/9
    #   MAP@R    = top 3 holds ranks 1,3: (1 + 2/3) / 3 = 5/9
    #   R-Prec   = 2 hits in top 3 / 3             = 2/3
    #   P@2      = 1/2;  R@2 = 1/3;  Hit@2 = 1
    #   lenient@5 = (1 + 2/3) / 2 hits             = 5/6
    # Query B: ranking  . . . R R, R = 2.
    #   AP       = (1/4 + 2/5) / 2                 = 13/40
    #   MAP@R    = top 2 has no hits               = 0
    #   R-Prec   = 0;  P@2 = 0;  R@2 = 0;  Hit@2 = 0
    #   lenient@5 = (1/4 + 2/5) / 2                = 13/40
    rel = np.array([[1, 0, 1, 0, 0], [0, 0, 0, 1, 1]], dtype=bool)
    r = np.array([3, 2])
    np.testing.assert_allclose(m.average_precision(rel, r), [5 / 9, 13 / 40])
    np.testing.assert_allclose(m.map_at_r(rel, r), [5 / 9, 0.0])
    np.testing.assert_allclose(m.r_precision(rel, r), [2 / 3, 0.0])
    np.testing.assert_allclose(m.precision_at_k(rel, 2), [1 / 2, 0.0])
    np.testing.assert_allclose(m.recall_at_k(rel, r, 2), [1 / 3, 0.0])
    np.testing.assert_allclose(m.hit_at_k(rel, 2), [1.0, 0.0])
    np.testing.assert_allclose(m.lenient_map_at_k(rel, 5), [5 / 6, 13 / 40])
    # Same rankings at k=1: lenient gives A a perfect 1.0 although it missed 2 of its 3 relevant items.
    np.testing.assert_allclose(m.lenient_map_at_k(rel, 1), [1.0, 0.0])


def test_relevance_from_labels() -> None:
    ranked = np.array([["a", "b", "a"], ["c", "c", "b"]])
    np.testing.assert_array_equal(
        m.relevance_from_labels(ranked, np.array(["a", "b"])), [[True, False, True], [False, False, True]]
    )
    with pytest.raises(ValueError):
        m.relevance_from_labels(ranked, np.array(["a"]))


def test_rejects_bad_input() -> None:
    rel = np.array([[True, False]])
    with pytest.raises(ValueError, match="boolean"):
        m.average_precision(rel.astype(int), np.array([1]))
    with pytest.raises(ValueError, match="smaller"):
        m.average_precision(rel, np.array([0]))
    with pytest.raises(ValueError, match="shape"):
        m.map_at_r(rel, np.array([1, 1]))
    with pytest.raises(ValueError, match="k=3"):
        m.precision_at_k(rel, 3)
    with pytest.raises(ValueError, match="k=0"):
        m.hit_at_k(rel, 0)


@pytest.mark.parametrize(("n", "r"), [(1, 1), (2, 1), (5, 2), (7, 7), (9, 0), (12, 4)])
def test_expected_random_ap_is_exact(n: int, r: int) -> None:
    # Average AP over every placement of the R relevant items among N ranks (all equally likely).
    from itertools import combinations

    aps = []
    for pos in combinations(range(n), r):
        row = [i in pos for i in range(n)]
        aps.append(slow_ap(row, r))
    assert m.expected_random_ap(np.array([r]), np.array([n]))[0] == pytest.approx(np.mean(aps))


def test_chance_map_uses_prevalence_and_patient_exclusion() -> None:
    gallery = np.array(["a"] * 30 + ["b"] * 70)
    chance = m.chance_map(np.array(["a", "b", "z"]), gallery)
    assert chance[0] == pytest.approx(m.expected_random_ap(np.array([30]), np.array([100]))[0])
    assert 0.30 < chance[0] < 0.36 and 0.70 < chance[1] < 0.73 and chance[2] == 0.0
    # The query's own patient owns 5 "a" and 5 "b" gallery items: R = 25, N = 90.
    patients = np.array(["p"] * 5 + ["x"] * 25 + ["p"] * 5 + ["y"] * 65)
    excluded = m.chance_map(np.array(["a"]), gallery, query_patients=np.array(["p"]), gallery_patients=patients)
    assert excluded[0] == pytest.approx(m.expected_random_ap(np.array([25]), np.array([90]))[0])
    with pytest.raises(ValueError):
        m.chance_map(np.array(["a"]), gallery, query_patients=np.array(["p"]))


def test_lenient_metric_inflates_a_random_ranking() -> None:
    # A random ranking of a gallery with cxr-public's label mix (bacterial, normal, viral, covid19): full AP
    # sits at chance (about 0.30), while the prior work's "mAP@10" reads about 0.46 and its "recall@10" (a hit
    # rate) about 0.93, for a ranking that retrieves about 0.5% of the relevant images in its top 10.
    rng = np.random.default_rng(0)
    mix = np.array([2500, 1589, 1477, 640]) / 6206
    gallery = rng.choice(4, size=2000, p=mix)
    queries = rng.choice(4, size=300, p=mix)
    ranked = np.stack([gallery[rng.permutation(len(gallery))] for _ in queries])
    rel = m.relevance_from_labels(ranked, queries)
    r = np.bincount(gallery, minlength=4)[queries]
    full = m.average_precision(rel, r).mean()
    chance = m.chance_map(queries, gallery).mean()
    lenient = m.lenient_map_at_k(rel, 10).mean()
    assert abs(full - chance) < 0.01
    assert lenient > 1.4 * full and lenient > full + 0.1
    assert m.hit_at_k(rel, 10).mean() > 0.9
    assert m.recall_at_k(rel, r, 10).mean() < 0.01


def test_agrees_with_pytorch_metric_learning() -> None:
    torch = pytest.importorskip("torch")
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    rng = np.random.default_rng(7)
    n_classes, dim = 5, 16
    centres = rng.normal(size=(n_classes, dim))
    ref_labels = rng.integers(0, n_classes, size=400)
    query_labels = rng.integers(0, n_classes, size=120)
    reference = centres[ref_labels] + 1.5 * rng.normal(size=(len(ref_labels), dim))
    query = centres[query_labels] + 1.5 * rng.normal(size=(len(query_labels), dim))

    # Our side: the full cosine ranking of the reference set for every query.
    unit_q = query / np.linalg.norm(query, axis=1, keepdims=True)
    unit_r = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    order = np.argsort(-(unit_q @ unit_r.T), axis=1, kind="stable")
    rel = m.relevance_from_labels(ref_labels[order], query_labels)
    r = np.bincount(ref_labels, minlength=n_classes)[query_labels]

    # faiss (pml's default knn) is not installed; exact torch cosine top-k gives the same ranking.
    calc = AccuracyCalculator(
        include=("mean_average_precision_at_r", "r_precision", "precision_at_1"),
        k="max_bin_count",
        knn_func=CustomKNN(CosineSimilarity()),
        device=torch.device("cpu"),
    )
    theirs = calc.get_accuracy(
        torch.tensor(query, dtype=torch.float32),
        torch.tensor(query_labels),
        torch.tensor(reference, dtype=torch.float32),
        torch.tensor(ref_labels),
        ref_includes_query=False,
    )
    assert math.isclose(m.map_at_r(rel, r).mean(), theirs["mean_average_precision_at_r"], abs_tol=1e-6)
    assert math.isclose(m.r_precision(rel, r).mean(), theirs["r_precision"], abs_tol=1e-6)
    assert math.isclose(m.precision_at_k(rel, 1).mean(), theirs["precision_at_1"], abs_tol=1e-6)
    assert 0.3 < theirs["mean_average_precision_at_r"] < 0.95  # a non-trivial problem, not all 0 or 1

    # Full mAP: pml's mean_average_precision divides by the hits within its top k, so with k = the whole
    # gallery every relevant item is a hit and it is exactly our AP over the whole ranking (divided by R).
    full = AccuracyCalculator(
        include=("mean_average_precision",),
        k=len(ref_labels),
        knn_func=CustomKNN(CosineSimilarity()),
        device=torch.device("cpu"),
    ).get_accuracy(
        torch.tensor(query, dtype=torch.float32),
        torch.tensor(query_labels),
        torch.tensor(reference, dtype=torch.float32),
        torch.tensor(ref_labels),
        ref_includes_query=False,
    )
    ours = m.average_precision(rel, r).mean()
    assert math.isclose(ours, full["mean_average_precision"], abs_tol=1e-6)
    assert ours > theirs["mean_average_precision_at_r"] + 0.05  # full AP also credits hits beyond rank R
