"""Bootstrap summaries: CIs bracket the means, per-class counts are right, the output is plain JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.evaluation.summary import summarize


@pytest.fixture()
def problem() -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(3)
    labels = np.array(["covid19"] * 40 + ["normal"] * 150 + ["viral"] * 10)
    base = {"covid19": 0.8, "normal": 0.5, "viral": 0.2}
    ap = np.clip(np.array([base[x] for x in labels]) + rng.normal(0, 0.15, size=len(labels)), 0, 1)
    hit = (rng.random(len(labels)) < ap).astype(float)
    return {"average_precision": ap, "hit_at_10": hit}, labels


def test_means_counts_and_intervals(problem: tuple[dict[str, np.ndarray], np.ndarray]) -> None:
    per_query, labels = problem
    out = summarize(per_query, labels, n_boot=500, seed=1)
    assert out["classes"] == ["covid19", "normal", "viral"]
    assert out["n_queries"] == 200
    for name, values in per_query.items():
        res = out["metrics"][name]
        assert res["micro"]["mean"] == pytest.approx(values.mean())
        class_means = [values[labels == c].mean() for c in out["classes"]]
        assert res["macro"]["mean"] == pytest.approx(np.mean(class_means))
        for block in [res["micro"], res["macro"], *res["per_class"].values()]:
            assert block["ci_low"] <= block["mean"] <= block["ci_high"]
            assert block["ci_low"] < block["ci_high"]
        counts = {c: v["n_queries"] for c, v in res["per_class"].items()}
        assert counts == {"covid19": 40, "normal": 150, "viral": 10}
        # The rare class has the widest interval.
        widths = {c: v["ci_high"] - v["ci_low"] for c, v in res["per_class"].items()}
        assert widths["viral"] > widths["normal"]


def test_json_serialisable_and_seeded(problem: tuple[dict[str, np.ndarray], np.ndarray]) -> None:
    per_query, labels = problem
    out = summarize(per_query, labels, n_boot=200, seed=5)
    text = json.dumps(out)
    assert json.loads(text) == out
    assert summarize(per_query, labels, n_boot=200, seed=5) == out
    assert summarize(per_query, labels, n_boot=200, seed=6) != out


def test_ci_covers_truth_for_a_known_mean() -> None:
    # Bernoulli(0.3) scores: the 95% interval from 400 queries should contain 0.3 (checked on a fixed seed).
    rng = np.random.default_rng(11)
    scores = (rng.random(400) < 0.3).astype(float)
    out = summarize({"hit_at_1": scores}, np.array(["a"] * 400), n_boot=1000)
    micro = out["metrics"]["hit_at_1"]["micro"]
    assert micro["ci_low"] < 0.3 < micro["ci_high"]
    assert 0.05 < micro["ci_high"] - micro["ci_low"] < 0.12  # about 2 * 1.96 * sqrt(.21 / 400) = 0.09


def test_rejects_bad_input() -> None:
    labels = np.array(["a", "b"])
    with pytest.raises(ValueError, match="shape"):
        summarize({"ap": np.zeros(3)}, labels)
    with pytest.raises(ValueError, match="non-finite"):
        summarize({"ap": np.array([0.5, np.nan])}, labels)
    with pytest.raises(ValueError):
        summarize({}, labels)


def test_macro_counts_only_classes_with_enough_queries(problem: tuple[dict[str, np.ndarray], np.ndarray]) -> None:
    per_query, labels = problem  # covid19 40, normal 150, viral 10 queries
    out = summarize(per_query, labels, n_boot=200, seed=0, min_class_queries=20)
    assert out["macro_classes"] == ["covid19", "normal"] and out["macro_min_queries"] == 20
    ap = per_query["average_precision"]
    expected = np.mean([ap[labels == "covid19"].mean(), ap[labels == "normal"].mean()])
    assert out["metrics"]["average_precision"]["macro"]["mean"] == pytest.approx(expected)
    # The left-out class is still reported on its own.
    assert out["metrics"]["average_precision"]["per_class"]["viral"]["n_queries"] == 10
    # When no class has enough queries, the macro mean falls back to every class, and says so.
    fallback = summarize(per_query, labels, n_boot=50, seed=0, min_class_queries=1000)
    assert fallback["macro_classes"] == ["covid19", "normal", "viral"]
    with pytest.raises(ValueError, match="min_class_queries"):
        summarize(per_query, labels, min_class_queries=0)


def _query_bootstrap_twin(values: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """The bootstrap as it was before patients: resample queries (one block, as for small sets)."""
    rng = np.random.default_rng(seed)
    boots = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    low, high = np.quantile(boots[:, 0], [0.025, 0.975])  # the first metric's interval
    return float(low), float(high)


def _without_patients(metrics: dict) -> dict:
    return {
        name: {
            **res,
            "per_class": {c: {k: v for k, v in e.items() if k != "n_patients"} for c, e in res["per_class"].items()},
        }
        for name, res in metrics.items()
    }


def test_one_patient_with_many_alike_queries_widens_the_interval() -> None:
    # 30 identical scores from one patient beside 30 patients with one query each: the 30 are one draw, not 30.
    rng = np.random.default_rng(0)
    scores = np.concatenate([np.ones(30), rng.uniform(0.0, 0.4, size=30)])
    groups = np.array(["p0"] * 30 + [f"p{i}" for i in range(1, 31)])
    labels = np.array(["a"] * 60)
    by_query = summarize({"ap": scores}, labels, n_boot=1000, seed=2)
    by_patient = summarize({"ap": scores}, labels, groups=groups, n_boot=1000, seed=2)
    q, p = by_query["metrics"]["ap"]["micro"], by_patient["metrics"]["ap"]["micro"]
    assert q["mean"] == p["mean"] == pytest.approx(scores.mean())
    assert p["ci_high"] - p["ci_low"] > 2 * (q["ci_high"] - q["ci_low"])
    assert by_patient["resample"] == "patients" and by_patient["n_patients"] == 31
    assert by_query["resample"] == "queries" and by_query["n_patients"] is None
    assert by_patient["metrics"]["ap"]["per_class"]["a"]["n_patients"] == 31


def test_one_query_per_patient_is_the_query_bootstrap(problem: tuple[dict[str, np.ndarray], np.ndarray]) -> None:
    # Every query its own patient: the same draws, so exactly the intervals of the query bootstrap.
    per_query, labels = problem
    groups = np.array([f"patient-{i:03d}" for i in np.random.default_rng(1).permutation(len(labels))])
    by_query = summarize(per_query, labels, n_boot=300, seed=4)
    by_patient = summarize(per_query, labels, groups=groups, n_boot=300, seed=4)
    assert _without_patients(by_patient["metrics"]) == _without_patients(by_query["metrics"])  # exactly equal
    assert by_patient["metrics"]["hit_at_10"]["per_class"]["viral"]["n_patients"] == 10
    assert by_patient["n_patients"] == len(labels)
    # ...and the query bootstrap is the one from before patients (checked against a naive twin).
    micro = by_query["metrics"]["average_precision"]["micro"]
    values = np.stack([per_query["average_precision"], per_query["hit_at_10"]], axis=1)
    low, high = _query_bootstrap_twin(values, 300, seed=4)
    assert (micro["ci_low"], micro["ci_high"]) == pytest.approx((low, high))


def test_patient_bootstrap_matches_a_naive_twin() -> None:
    # Naive twin: draw patients with the same generator, concatenate all their queries, take the mean.
    rng = np.random.default_rng(7)
    groups = np.array([f"p{g}" for g in rng.integers(0, 12, size=50)])
    scores = rng.random(50)
    out = summarize({"ap": scores}, np.array(["a"] * 50), groups=groups, n_boot=400, seed=9)
    order = list(dict.fromkeys(groups.tolist()))  # patients in order of first appearance
    members = [scores[groups == g] for g in order]
    draws = np.random.default_rng(9).integers(0, len(order), size=(400, len(order)))
    boots = [np.concatenate([members[i] for i in row]).mean() for row in draws]
    low, high = np.quantile(boots, [0.025, 0.975])
    micro = out["metrics"]["ap"]["micro"]
    assert (micro["ci_low"], micro["ci_high"]) == pytest.approx((low, high))


def test_micro_over_the_macro_classes(problem: tuple[dict[str, np.ndarray], np.ndarray]) -> None:
    per_query, labels = problem  # covid19 40, normal 150, viral 10 queries
    groups = np.array([f"p{i // 2}" for i in range(len(labels))])
    out = summarize(per_query, labels, groups=groups, n_boot=200, seed=0, min_class_queries=20)
    ap = per_query["average_precision"]
    scoped = out["metrics"]["average_precision"]["micro_in_macro_classes"]
    assert out["n_queries_in_macro_classes"] == 190
    assert scoped["mean"] == pytest.approx(ap[labels != "viral"].mean())
    assert scoped["ci_low"] <= scoped["mean"] <= scoped["ci_high"]
    # With every class in the macro mean, it is the micro mean, interval and all.
    every = summarize(per_query, labels, groups=groups, n_boot=200, seed=0)
    assert every["metrics"]["hit_at_10"]["micro_in_macro_classes"] == every["metrics"]["hit_at_10"]["micro"]
    # Adding the scoped draws changes no other interval.
    for name in per_query:
        assert out["metrics"][name]["micro"] == every["metrics"][name]["micro"]


def test_per_source_block(problem: tuple[dict[str, np.ndarray], np.ndarray]) -> None:
    per_query, labels = problem
    sources = np.where(np.arange(len(labels)) % 3 == 0, "siteB", "siteA")
    groups = np.array([f"p{i // 4}" for i in range(len(labels))])
    per_query = {
        "map": per_query["average_precision"],
        "map_at_r": per_query["hit_at_10"],
        "precision_at_5": per_query["hit_at_10"],
        "precision_at_1": per_query["average_precision"],
    }
    out = summarize(per_query, labels, groups=groups, sources=sources, n_boot=100, seed=0)
    assert json.loads(json.dumps(out)) == out
    block = out["per_source"]
    assert set(block) == set(out["classes"])
    cell = block["covid19"]["siteB"]
    mask = (labels == "covid19") & (sources == "siteB")
    assert set(cell) == {"map", "map_at_r", "precision_at_1", "n_queries", "n_patients"}  # P@ at the smallest k
    assert cell["n_queries"] == mask.sum() and cell["n_patients"] == len(set(groups[mask].tolist()))
    assert cell["map"]["mean"] == pytest.approx(per_query["map"][mask].mean())
    assert cell["map"]["ci_low"] <= cell["map"]["mean"] <= cell["map"]["ci_high"]
    assert sum(c["n_queries"] for by in block.values() for c in by.values()) == len(labels)
    # The per-source draws are their own stream: the other intervals do not move.
    plain = summarize(per_query, labels, groups=groups, n_boot=100, seed=0)
    assert plain["metrics"] == out["metrics"] and "per_source" not in plain
    with pytest.raises(ValueError, match="groups"):
        summarize(per_query, labels, groups=groups[:-1])
