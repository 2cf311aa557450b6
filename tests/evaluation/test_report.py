"""Report pieces without a store: chance formulas against simulation, audit and PR curves by hand, layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.evaluation.audit import shortcut_audit
from services.evaluation.baselines import (
    chance_per_query,
    expected_hit_at_k,
    expected_lenient_ap,
    expected_map_at_r,
    raw_pixel_embeddings,
)
from services.evaluation.metrics import hit_at_k, lenient_map_at_k, map_at_r
from services.evaluation.plots import interpolated_pr
from services.evaluation.report import NAMES, build_report, render_markdown, shape_summary
from services.evaluation.scoring import per_query_metrics, score_retrieval
from services.evaluation.types import EvalConfig, RetrievalSet


@pytest.mark.parametrize(("r", "n"), [(1, 12), (4, 12), (9, 15), (12, 12), (3, 30)])
def test_chance_formulas_match_simulation(r: int, n: int) -> None:
    """Naive twin: average each metric over many random rankings of N items, R of them relevant."""
    rng = np.random.default_rng(r * 100 + n)
    trials = 20_000
    rel = np.zeros((trials, n), dtype=bool)
    rel[:, :r] = True
    rel = rng.permuted(rel, axis=1)
    k = 10
    sim = {
        "map_at_r": map_at_r(rel, np.full(trials, r)).mean(),
        "hit": hit_at_k(rel, k).mean(),
        "lenient": lenient_map_at_k(rel, k).mean(),
    }
    assert expected_map_at_r(np.array([r]), np.array([n]))[0] == pytest.approx(sim["map_at_r"], abs=0.01)
    assert expected_hit_at_k(np.array([r]), np.array([n]), k)[0] == pytest.approx(sim["hit"], abs=0.01)
    assert expected_lenient_ap(np.array([r]), np.array([n]), k)[0] == pytest.approx(sim["lenient"], abs=0.01)


def test_chance_row_has_every_metric_and_known_values() -> None:
    out = chance_per_query(np.array([5, 0]), np.array([20, 20]), (1, 10), 10)
    assert set(out) == set(per_query_metrics(np.zeros((1, 20), bool), np.array([1]), (1, 10)))
    assert out["precision_at_1"][0] == out["r_precision"][0] == 0.25
    assert out["recall_at_10"][0] == 0.5
    assert out["map_at_r"][1] == 0.0 and out["map"][1] == 0.0
    # With every item relevant, every ranking is perfect.
    full = chance_per_query(np.array([7]), np.array([7]), (1,), 7)
    assert full["map"][0] == pytest.approx(1.0) and full["map_at_r"][0] == pytest.approx(1.0)
    assert full["lenient_map_at_7"][0] == pytest.approx(1.0)


def test_raw_pixels_are_unit_flattened_thumbnails() -> None:
    images = np.random.default_rng(0).random((3, 32, 32), dtype=np.float32)
    emb = raw_pixel_embeddings(images)
    assert emb.shape == (3, 1024)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0)
    assert np.allclose(emb[0] * np.linalg.norm(images[0]), images[0].ravel(), atol=1e-6)


def test_shortcut_audit_by_hand() -> None:
    # Gallery: 0,1 = (A, s1); 2 = (B, s1); 3 = (B, s2); 4 = (A, s2) but the query's own patient.
    order = np.array([[2, 0, 3, 1, 4]])  # as rank_relevance leaves it: the own patient last
    audit = shortcut_audit(
        order,
        np.array(["A"]),
        np.array(["s1"]),
        np.array(["p"]),
        np.array(["A", "A", "B", "B", "A"]),
        np.array(["s1", "s1", "s1", "s2", "s2"]),
        np.array(["g0", "g1", "g2", "g3", "p"]),
        k=2,
    )
    overall = audit["overall"]
    assert overall["n_queries"] == 1 and audit["per_class"]["A"]["n_queries"] == 1
    assert overall["same_source"] == 1.0
    assert overall["same_label"] == 0.5
    assert overall["same_source_other_label"] == 0.5
    assert overall["chance_same_source"] == pytest.approx(3 / 4)
    assert overall["chance_same_label"] == pytest.approx(2 / 4)


def test_audit_and_scoring_exclude_own_patient() -> None:
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(8, 4)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.array(["A", "B"] * 4)
    gallery = RetrievalSet(emb, labels, np.array([f"p{i}" for i in range(8)]), np.array(["s"] * 8), ("x",) * 8)
    query = RetrievalSet(emb[:2], labels[:2], np.array(["p0", "p1"]), np.array(["s", "s"]), ("q0", "q1"))
    scored = score_retrieval(query, gallery, ks=(1, 5), n_boot=10)
    assert list(scored.n_eligible) == [7, 7] and list(scored.n_relevant) == [3, 3]
    assert scored.order[0, -1] == 0 and scored.order[1, -1] == 1  # own image ranked last, never counted
    assert scored.audit["overall"]["same_label"] <= 1.0
    assert scored.summary["metrics"]["map"]["micro"]["mean"] > 0


def test_interpolated_pr_by_hand() -> None:
    rel = np.array([[True, False, True, False]])
    curve = interpolated_pr(rel, np.array([2]), levels=np.array([0.0, 0.5, 0.51, 1.0]))
    # precision at ranks: 1, 1/2, 2/3, 1/2; recall 0.5 at rank 1, 1.0 at rank 3.
    assert np.allclose(curve, [[1.0, 1.0, 2 / 3, 2 / 3]])
    # A relevant item that never appears (R larger than the hits): recall 1 is never reached.
    assert interpolated_pr(rel, np.array([4]), levels=np.array([1.0]))[0, 0] == 0.0


def _fake_summary(classes: list[str], ks: tuple[int, ...]) -> dict:
    names = ["map", "map_at_r", "r_precision", "lenient_map_at_10"]
    names += [f"{m}_{k}" for m in ("precision_at", "recall_at", "hit_at") for k in ks]
    cell = {"mean": 0.5, "ci_low": 0.4, "ci_high": 0.6}
    metrics = {
        n: {"micro": cell, "macro": cell, "per_class": {c: {**cell, "n_queries": 1 + i} for i, c in enumerate(classes)}}
        for n in names
    }
    return {
        "n_queries": 3,
        "n_boot": 10,
        "seed": 0,
        "alpha": 0.05,
        "classes": classes,
        "macro_classes": classes[1:],
        "metrics": metrics,
    }


def test_build_report_layout_and_markdown() -> None:
    ks = (1, 5, 10)
    summary = _fake_summary(["a", "b"], ks)
    audit = {
        "k": 10,
        "overall": {
            "same_source": 0.9,
            "same_label": 0.5,
            "same_source_other_label": 0.4,
            "chance_same_source": 0.5,
            "chance_same_label": 0.5,
            "n_queries": 3,
        },
        "per_class": {},
    }
    meta = {
        "model_id": "m-1",
        "model_recipe": {"loss": "x"},
        "collection": "c",
        "split": {
            "file": "s.json",
            "sha256": "ab" * 32,
            "gallery": "train",
            "model_split_sha256": "cd" * 32,
            "matches_training_split": False,
            "counts": {"train": 1, "val": 0, "test": 1},
        },
        "queries": {"manifest": "theirs.csv", "from": "query manifest", "n_rows": 4},
        "leakage": {
            "n_queries_checked": 4,
            "exact": {"n_queries": 1, "pairs": [{"query": "q/copy.png", "gallery": "g/orig.png"}]},
            "near_duplicate": {"n_queries": 0, "max_bits": 10, "pairs": []},
            "n_leaking_queries": 1,
            "excluded": True,
            "queries_without_patient_id": 2,
            "gallery_without_patient_id": 0,
            "queries_sharing_a_gallery_patient": 0,
        },
        "n_queries": 3,
        "n_queries_without_relevant": 0,
        "n_gallery": 9,
        "store_agreement": {"n_agree": 1, "n_checked": 1, "rate": 1.0},
        "indexing": {},
        "config": {},
    }
    cfg = EvalConfig(model=Path("m"), manifest=Path("x.csv"), out_dir=Path("o"), min_class_queries=2)
    report = build_report(summary, audit, summary, {"raw_pixels": (summary, audit)}, meta, ks=ks, cfg=cfg)
    assert set(report["precision_at_k"]) == {"1", "5", "10"}
    assert report["map"] == {
        "mean": 0.5,
        "ci_low": 0.4,
        "ci_high": 0.6,
        "macro": {"mean": 0.5, "ci_low": 0.4, "ci_high": 0.6},
    }
    assert report["per_class"]["a"]["few_queries"] and not report["per_class"]["b"]["few_queries"]
    assert report["per_class"]["b"]["precision_at_k"]["10"]["mean"] == 0.5
    assert "LENIENT" in report["lenient_map_at_10"]["note"]
    assert set(report["baselines"]["raw_pixels"]) == set(shape_summary(summary, ks))
    md = render_markdown(report, {"pr": "pr_curves.png"})
    for name in ("full mAP", "MAP@R", "R-Precision", "P@1", "P@10", "Recall@5", "Hit@10", NAMES["lenient_map_at_10"]):
        assert name in md
    lines = md.splitlines()
    model_row = next(line for line in lines if line.startswith("| model |"))
    assert "0.500 [0.400, 0.600]" in model_row
    assert md.index("| raw pixels |") < md.index("| chance |") < md.index("Recall@1")
    assert "a (few queries, not in macro)" in md and "![pr](pr_curves.png)" in md
    assert report["macro"] == {
        "min_class_queries": 2,
        "classes": ["b"],
        "left_out": ["a"],
        "fallback_all_classes": False,
    }
    assert "N = 2 scored queries: b); left out, listed per class below: a" in md
    # Provenance and leakage are stated, not hidden: the external manifest, the split mismatch, the leaked pair.
    assert "queries from the query manifest `theirs.csv`" in md
    assert "**Split mismatch.**" in md and "cdcdcdcdcdcd" in md
    assert "1 are byte-identical to a gallery image" in md and "excluded from scoring" in md
    assert "| exact | q/copy.png | g/orig.png |" in md
    assert "2 queries and 0 gallery images have no patient id" in md
