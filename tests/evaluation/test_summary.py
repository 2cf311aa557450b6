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
