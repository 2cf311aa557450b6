"""Report pieces without a store: chance formulas against simulation, audit and PR curves by hand, layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.evaluation.audit import shortcut_audit
from services.evaluation.baselines import (
    chance_per_query,
    chance_summary,
    expected_hit_at_k,
    expected_lenient_ap,
    expected_map_at_r,
    raw_pixel_embeddings,
)
from services.evaluation.gallery import age_of, query_set
from services.evaluation.metrics import hit_at_k, lenient_map_at_k, map_at_r
from services.evaluation.plots import interpolated_pr
from services.evaluation.report import NAMES, build_report, render_markdown, shape_summary
from services.evaluation.scoring import per_query_metrics, score_retrieval
from services.evaluation.types import EvalConfig, RetrievalSet
from services.manifest import ManifestRow


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
    assert overall["chance_same_source_other_label"] == pytest.approx(1 / 4)
    # No ages given: the age shares are undefined, not zero.
    assert overall["n_queries_with_age"] == 0 and overall["other_age_group"] is None
    assert audit["per_source"] == {"A": {"s1": overall}}


def test_shortcut_audit_age_groups_by_hand() -> None:
    # Gallery as above, ages: g0 child (5), g1 adult, g2 unknown, g3 adult, own patient adult (never counted).
    # Query 0 (child, A, s1) ranks [2, 0, 3, 1, 4]: its top 2 are g2 (no age) and g0 (child) -> 0 of 1 known
    # is adult; the eligible known-age gallery is g0, g1, g3 -> 2 of 3 adult. Query 1 has no age.
    order = np.array([[2, 0, 3, 1, 4], [3, 1, 0, 2, 4]])
    audit = shortcut_audit(
        order,
        np.array(["A", "B"]),
        np.array(["s1", "s2"]),
        np.array(["p", "p"]),
        np.array(["A", "A", "B", "B", "A"]),
        np.array(["s1", "s1", "s1", "s2", "s2"]),
        np.array(["g0", "g1", "g2", "g3", "p"]),
        k=2,
        query_ages=np.array([10.0, np.nan]),
        gallery_ages=np.array([5.0, 30.0, np.nan, 40.0, 50.0]),
    )
    assert audit["adult_age"] == 18 and audit["n_gallery"] == 5 and audit["n_gallery_with_age"] == 4
    overall = audit["overall"]
    assert overall["n_queries"] == 2 and overall["n_queries_with_age"] == 1
    assert overall["other_age_group"] == 0.0
    assert overall["chance_other_age_group"] == pytest.approx(2 / 3)
    assert audit["per_class"]["B"]["other_age_group"] is None and audit["per_class"]["B"]["n_queries_with_age"] == 0
    # Per (label, source): query 1 is (B, s2); its top 2 are g3 (B, s2) and g1 (A, s1).
    cell = audit["per_source"]["B"]["s2"]
    assert cell["n_queries"] == 1 and cell["same_source"] == 0.5 and cell["same_label"] == 0.5
    assert cell["chance_same_source"] == pytest.approx(1 / 4)


def test_audit_and_scoring_exclude_own_patient() -> None:
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(8, 4)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.array(["A", "B"] * 4)
    gallery = RetrievalSet(emb, labels, np.array([f"p{i}" for i in range(8)]), np.array(["s"] * 8), ("x",) * 8)
    query = RetrievalSet(emb[:2], labels[:2], np.array(["p0", "p1"]), np.array(["s", "s"]), ("q0", "q1"))
    scored = score_retrieval(query, gallery, ks=(1, 5), n_boot=10)
    assert scored.summary["resample"] == "patients" and scored.summary["n_patients"] == 2
    assert scored.summary["per_source"]["A"]["s"]["n_queries"] == 1
    assert scored.queries is query and np.isnan(query.ages).all()
    chance = chance_summary(scored, query.labels, ks=(1, 5), n_boot=10, seed=0)
    assert chance["resample"] == "patients" and set(chance["per_source"]) == {"A", "B"}
    assert list(scored.n_eligible) == [7, 7] and list(scored.n_relevant) == [3, 3]
    assert scored.order[0, -1] == 0 and scored.order[1, -1] == 1  # own image ranked last, never counted
    assert scored.audit["overall"]["same_label"] <= 1.0
    assert scored.summary["metrics"]["map"]["micro"]["mean"] > 0


def test_retrieval_sets_carry_ages() -> None:
    rows = [
        ManifestRow(Path("/d/a.png"), "A", "p1", age=7, origin_dataset="kids"),
        ManifestRow(Path("/d/b.png"), "B", None, source="icu"),
    ]
    query = query_set(rows, b"salt", np.zeros((2, 3), np.float32), Path("/d"))
    assert query.ages[0] == 7.0 and np.isnan(query.ages[1])
    assert list(query.sources) == ["kids", "icu"]
    assert query.subset(np.array([False, True])).ages.shape == (1,)
    assert age_of(None, "045Y") == 45.0 and np.isnan(age_of(None, "?"))  # manifest first, then payload
    with pytest.raises(ValueError, match="ages"):
        RetrievalSet(query.emb, query.labels, query.groups, query.sources, query.paths, ages=np.zeros(3))


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
    other = {"mean": 0.25, "ci_low": 0.2, "ci_high": 0.3}
    per_class = {c: {**cell, "n_queries": 1 + i, "n_patients": 1} for i, c in enumerate(classes)}
    metrics = {
        n: {"micro": cell, "macro": cell, "micro_in_macro_classes": other, "per_class": per_class} for n in names
    }
    per_source = {
        c: {"siteX": {"map": cell, "map_at_r": cell, "precision_at_1": other, "n_queries": 1, "n_patients": 1}}
        for c in classes
    }
    return {
        "n_queries": 3,
        "n_patients": 2,
        "resample": "patients",
        "n_queries_in_macro_classes": 2,
        "per_source": per_source,
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
        "n_gallery": 9,
        "n_gallery_with_age": 4,
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
        "micro_in_macro_classes": {"mean": 0.25, "ci_low": 0.2, "ci_high": 0.3},
    }
    assert report["bootstrap"]["resample"] == "patients" and report["bootstrap"]["n_patients"] == 2
    assert "over patients" in report["definitions"]["ci"]
    assert report["per_source"]["a"]["siteX"]["precision_at_1"]["mean"] == 0.25
    assert report["chance"]["per_source"] == report["baselines"]["raw_pixels"]["per_source"] == report["per_source"]
    assert report["per_class"]["b"]["n_patients"] == 1
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
        "n_queries": 2,
    }
    assert "N = 2 scored queries: b); left out, listed per class below: a" in md
    # Which classes each mean covers, and the micro mean over the macro classes beside the others.
    assert "micro mean over all 3 scored queries, 95% bootstrap CI over 2 patients" in md
    assert "The micro mean covers every class: a, b." in md
    assert "Micro mean over the 2 queries of the macro classes only (b; without a):" in md
    assert md.count("| model | 0.250 [0.200, 0.300]") == 1
    # The per-source table: every method under each (label, source), chance included.
    assert "| class | source | queries | patients | method | full mAP | MAP@R | P@1 |" in md
    assert "| a | siteX | 1 | 1 | model | 0.500 [0.400, 0.600] | 0.500 [0.400, 0.600] | 0.250 [0.200, 0.300] |" in md
    assert "| a | siteX | 1 | 1 | chance |" in md and "| b | siteX | 1 | 1 | raw pixels |" in md
    # The audit says what each share means and shows it beside its chance level; unknown shares show "-".
    assert "**other age group**: among the top-K images of known age" in md
    assert "Ages are known for 4 of 9 gallery images" in md
    assert "| model | all | 3 | 0.900 | 0.500 | 0.500 | 0.500 | 0.400 | - | - | - | - |" in md
    # Provenance and leakage are stated, not hidden: the external manifest, the split mismatch, the leaked pair.
    assert "queries from the query manifest `theirs.csv`" in md
    assert "**Split mismatch.**" in md and "cdcdcdcdcdcd" in md
    assert "1 are byte-identical to a gallery image" in md and "excluded from scoring" in md
    assert "| exact | q/copy.png | g/orig.png |" in md
    assert "2 queries and 0 gallery images have no patient id" in md
