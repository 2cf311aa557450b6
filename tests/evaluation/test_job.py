"""End-to-end evaluation on a small real subset of cxr-public: index, query, score, report, plots, reuse."""

from __future__ import annotations

import csv
import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.config import Settings
from services.embedding import BatchEncoder, create_encoder, save_checkpoint
from services.evaluation.job import EvalConfig, run_eval
from services.imaging import decode_image, to_model_input
from services.index import open_store
from services.manifest import read_manifest
from services.splits import read_split, split_rows

PER_CLASS = 15
MAIN_CLASSES = ("covid19", "normal", "pneumonia_bacterial", "pneumonia_viral")
REQUIRED_KEYS = (
    "map",
    "map_at_r",
    "r_precision",
    "precision_at_k",
    "recall_at_k",
    "hit_at_k",
    "per_class",
    "lenient_map_at_10",
    "chance",
    "baselines",
    "audit",
    "definitions",
    "config",
    "model_id",
    "model_recipe",
    "split",
    "n_queries",
    "n_gallery",
    "store_agreement",
    "leakage",
    "macro",
    "queries",
)


def _sub_manifest(src: Path, dest: Path) -> Path:
    """60 real rows (15 per main class, favouring patients with several images), images copied beside it."""
    with (src / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    by_class: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_class[row["label"]][row["patient_id"]].append(row)
    chosen = []
    for label in MAIN_CLASSES:
        patients = sorted(by_class[label].values(), key=lambda imgs: (-min(len(imgs), 3), imgs[0]["path"]))
        picked: list[dict] = []
        for images in patients:
            picked += images[: min(3, PER_CLASS - len(picked))]
            if len(picked) >= PER_CLASS:
                break
        chosen += picked
    for row in chosen:  # copied: split files name images relative to the manifest folder
        target = dest / row["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / row["path"], target)
    path = dest / "manifest.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(chosen)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, cxr_public: Path) -> dict:
    root = tmp_path_factory.mktemp("eval")
    manifest = _sub_manifest(cxr_public, root)
    model = save_checkpoint(create_encoder("vit-tiny", image_size=32, seed=0), root / "model")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXR_DATA_DIR", str(root / "cxr-data"))
        for name in ("CXR_QDRANT_URL", "CXR_QDRANT_PATH", "CXR_QDRANT_API_KEY", "CXR_PATIENT_SALT"):
            mp.delenv(name, raising=False)
        settings = Settings(decode_workers=1)
    return {"root": root, "manifest": manifest, "model": model, "settings": settings}


@pytest.fixture(scope="module")
def first(setup: dict) -> dict:
    cfg = EvalConfig(model=setup["model"], manifest=setup["manifest"], out_dir=setup["root"] / "run1", n_boot=100)
    events: list[str] = []
    report = run_eval(cfg, setup["settings"], on_event=events.append)
    return {"cfg": cfg, "report": report, "events": events}


def _values(node: object) -> list[float]:
    """Every mean/ci number in a metric block tree."""
    if isinstance(node, dict):
        out = [float(v) for k, v in node.items() if k in ("mean", "ci_low", "ci_high")]
        for v in node.values():
            if isinstance(v, dict):
                out += _values(v)
        return out
    return []


def test_report_has_every_key_and_valid_values(first: dict) -> None:
    report = first["report"]
    assert set(REQUIRED_KEYS) <= set(report)
    assert set(report["precision_at_k"]) == {"1", "5", "10"}
    for key in ("map", "map_at_r", "r_precision", "lenient_map_at_10"):
        assert {"mean", "ci_low", "ci_high", "macro"} <= set(report[key])
    numbers = _values({k: report[k] for k in ("map", "map_at_r", "r_precision", "precision_at_k", "recall_at_k")})
    numbers += _values({k: report[k] for k in ("hit_at_k", "per_class", "chance", "baselines")})
    assert numbers and all(0.0 <= v <= 1.0 for v in numbers)
    assert report["map"]["ci_low"] <= report["map"]["mean"] <= report["map"]["ci_high"]
    assert set(report["per_class"]) == set(MAIN_CLASSES)
    assert report["n_queries"] > 0 and report["n_gallery"] > report["n_queries"]
    assert report["split"]["counts"]["train"] >= report["n_gallery"]
    assert report["store_agreement"]["n_checked"] > 0
    assert report["store_agreement"]["rate"] == 1.0
    assert report["indexing"]["indexed"] == report["n_gallery"]
    # In-split on de-duplicated data: no test film is in the gallery, every film has a patient id.
    assert report["leakage"]["n_leaking_queries"] == 0 and report["leakage"]["queries_without_patient_id"] == 0
    assert report["leakage"]["n_queries_checked"] == report["split"]["counts"]["test"]
    # 3-5 test queries per class: below the default N = 10, so the macro mean says it fell back to all classes.
    assert report["macro"]["min_class_queries"] == 10 and report["macro"]["fallback_all_classes"]
    assert "no class has N = 10 scored queries" in (first["cfg"].out_dir / "report.md").read_text()


def test_baseline_chance_and_audit_present(first: dict) -> None:
    report = first["report"]
    assert set(report["baselines"]) == {"raw_pixels", "imagenet_lite0"}
    for block in (report["chance"], *report["baselines"].values()):
        assert {"map", "map_at_r", "r_precision", "precision_at_k", "per_class"} <= set(block)
        assert set(block["per_class"]) == set(MAIN_CLASSES)
    # The three rows are different methods: their full mAP differs (an alias of one row would not).
    maps = [report["map"]["mean"], *(b["map"]["mean"] for b in report["baselines"].values())]
    assert len({round(v, 6) for v in maps}) == 3
    assert "| imagenet lite0 |" in (first["cfg"].out_dir / "report.md").read_text()
    # Chance P@K is the prevalence, the same for every k.
    chance_pk = {round(v["mean"], 9) for v in report["chance"]["precision_at_k"].values()}
    assert len(chance_pk) == 1
    for method in ("model", "raw_pixels", "imagenet_lite0"):
        overall = report["audit"][method]["overall"]
        assert 0 <= overall["same_source"] <= 1 and 0 <= overall["same_label"] <= 1
        assert set(report["audit"][method]["per_class"]) == set(MAIN_CLASSES)
        assert set(report["audit"][method]["per_source"]) == set(MAIN_CLASSES)
        assert 0 <= overall["n_queries_with_age"] <= overall["n_queries"]
    # Intervals resample patients; every method has a per (label, source) block over the same queries.
    assert report["bootstrap"]["resample"] == "patients"
    assert 0 < report["bootstrap"]["n_patients"] <= report["n_queries"]
    for block in (report, report["chance"], *report["baselines"].values()):
        cells = [c for by_source in block["per_source"].values() for c in by_source.values()]
        assert sum(c["n_queries"] for c in cells) == report["n_queries"]
        assert all({"map", "map_at_r", "precision_at_1"} <= set(c) for c in cells)
    assert "## Per label and source" in (first["cfg"].out_dir / "report.md").read_text()


def _patients(manifest: Path) -> dict[str, str]:
    with manifest.open(newline="", encoding="utf-8") as fh:
        return {str(manifest.parent / r["path"]): r["patient_id"] for r in csv.DictReader(fh)}


def test_rankings_are_sorted_and_patient_disjoint(setup: dict, first: dict) -> None:
    patient = _patients(setup["manifest"])
    lines = (first["cfg"].out_dir / "rankings.jsonl").read_text().splitlines()
    assert len(lines) == first["report"]["split"]["counts"]["test"]
    for line in lines:
        item = json.loads(line)
        own = patient[str(setup["manifest"].parent / item["query"])]
        assert len(item["top"]) == 10
        assert all(patient[str(setup["manifest"].parent / hit["path"])] != own for hit in item["top"])
        scores = [hit["score"] for hit in item["top"]]
        assert scores == sorted(scores, reverse=True)


def test_same_patient_items_are_never_ranked(setup: dict, first: dict) -> None:
    """A deliberately leaky split (patients in both train and test): their gallery images must not appear."""
    split = json.loads((first["cfg"].out_dir / "split.json").read_text())
    patient = _patients(setup["manifest"])
    root = setup["manifest"].parent
    by_patient: dict[str, list[str]] = defaultdict(list)
    for rel in split["train"]:
        by_patient[patient[str(root / rel)]].append(rel)
    movers = [imgs[0] for imgs in by_patient.values() if len(imgs) >= 2][:6]
    assert len(movers) >= 3, "the sub-manifest should hold patients with several images"
    split["train"] = [p for p in split["train"] if p not in movers]
    split["test"] = sorted(split["test"] + movers)
    split["counts"] = {name: len(split[name]) for name in ("train", "val", "test")}
    leaky = setup["root"] / "leaky.json"
    leaky.write_text(json.dumps(split))
    out = setup["root"] / "leaky"
    cfg = EvalConfig(
        model=setup["model"], manifest=setup["manifest"], out_dir=out, split_file=leaky, n_boot=20, baselines=False
    )
    report = run_eval(cfg, setup["settings"])
    n_gallery = report["n_gallery"]
    checked = 0
    for line in (out / "rankings.jsonl").read_text().splitlines():
        item = json.loads(line)
        own = patient[str(root / item["query"])]
        siblings = sum(patient[str(root / p)] == own for p in split["train"])
        # Every eligible gallery image is listed (up to 10), none of them the query's own patient.
        assert len(item["top"]) == min(10, n_gallery - siblings)
        assert all(patient[str(root / hit["path"])] != own for hit in item["top"])
        checked += siblings > 0
    assert checked >= len(movers)
    assert report["store_agreement"]["rate"] == 1.0


def test_outputs_written(first: dict) -> None:
    out = first["cfg"].out_dir
    for name in ("pr_curves.png", "per_class.png", "examples.png"):
        with Image.open(out / name) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 100
    md = (out / "report.md").read_text()
    for name in ("full mAP", "MAP@R", "R-Precision", "P@1", "P@10", "Recall@10", "Hit@10", "lenient AP@10/hits"):
        assert name in md, name
    assert md.index("full mAP") < md.index("Recall@10") < md.index("lenient AP@10/hits")
    for png in ("pr_curves.png", "per_class.png", "examples.png"):
        assert f"]({png})" in md
    assert "confounded with source" in md
    assert json.loads((out / "report.json").read_text())["map"] == first["report"]["map"]
    assert (out / "split.json").exists()


def test_rerun_reuses_collection(setup: dict, first: dict) -> None:
    collection = first["report"]["collection"]
    cfg = EvalConfig(
        model=setup["model"],
        manifest=setup["manifest"],
        out_dir=setup["root"] / "run2",
        n_boot=100,
        split_file=first["cfg"].out_dir / "split.json",
        baselines=False,
    )
    report = run_eval(cfg, setup["settings"])
    assert report["indexing"]["reused"] and report["indexing"]["indexed"] == 0
    assert report["n_gallery"] == first["report"]["n_gallery"]
    assert report["map"] == first["report"]["map"]
    assert report["baselines"] == {}
    store = open_store(setup["settings"])
    try:
        assert store.count(collection) == first["report"]["n_gallery"]
    finally:
        store.close()


def test_merge_gives_three_classes(setup: dict, first: dict) -> None:
    cfg = EvalConfig(
        model=setup["model"],
        manifest=setup["manifest"],
        out_dir=setup["root"] / "merged",
        n_boot=50,
        split_file=first["cfg"].out_dir / "split.json",
        merges=("pneumonia_bacterial,pneumonia_viral=pneumonia",),
    )
    report = run_eval(cfg, setup["settings"])
    assert set(report["per_class"]) == {"covid19", "normal", "pneumonia"}
    assert set(report["chance"]["per_class"]) == {"covid19", "normal", "pneumonia"}
    # Merging only adds relevant items, so the chance level of full mAP can only go up.
    assert report["chance"]["map"]["mean"] >= first["report"]["chance"]["map"]["mean"]
    assert report["config"]["merges"] == ["pneumonia_bacterial,pneumonia_viral=pneumonia"]
    assert np.isclose(report["n_queries"], first["report"]["n_queries"])


def test_report_numbers_equal_a_from_scratch_recomputation(setup: dict, first: dict) -> None:
    """Naive twin of the whole job: embed every file directly, rank by a slow loop, average AP per query.

    The job's gallery went through the ingest pipeline into the store and back; if it lost, duplicated or
    mismatched a point (or its patient), or ranked or excluded wrongly, the numbers would differ."""
    rows = read_manifest(setup["manifest"])
    parts = split_rows(rows, read_split(first["cfg"].out_dir / "split.json"), setup["manifest"].parent)
    encoder = BatchEncoder.from_checkpoint(setup["model"], bf16=setup["settings"].bf16)

    def embed(items: list) -> np.ndarray:
        return encoder.encode(
            np.stack([to_model_input(decode_image(r.path).pixels, encoder.image_size) for r in items])
        )

    g_emb, q_emb = embed(parts["train"]), embed(parts["test"])
    aps: dict[str, list[float]] = defaultdict(list)
    for q, query in enumerate(parts["test"]):
        eligible = [i for i, g in enumerate(parts["train"]) if g.patient_id != query.patient_id]
        ranked = sorted(eligible, key=lambda i: -float(g_emb[i] @ q_emb[q]))
        relevant = [parts["train"][i].label == query.label for i in ranked]
        if not any(relevant):
            continue
        hits, total = 0, 0.0
        for rank, is_rel in enumerate(relevant, start=1):
            if is_rel:
                hits += 1
                total += hits / rank
        aps[query.label].append(total / sum(relevant))
    report = first["report"]
    every = [ap for values in aps.values() for ap in values]
    assert report["n_queries"] == len(every)
    # bf16 batches of another size can move a cosine in the 4th decimal and swap two near-equal neighbours.
    assert report["map"]["mean"] == pytest.approx(np.mean(every), abs=2e-3)
    for label, values in aps.items():
        assert report["per_class"][label]["n_queries"] == len(values)
        assert report["per_class"][label]["map"]["mean"] == pytest.approx(np.mean(values), abs=5e-3)
