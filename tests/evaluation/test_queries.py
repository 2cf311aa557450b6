"""`cxr eval --queries`: another manifest queries the gallery, with leaks planted and found, and the split rules.

The query manifest lives in its own folder and holds three kinds of real images: byte-identical copies of
gallery films under new names and new patient ids (exact leaks), re-encoded and shrunk copies (near-duplicates),
and fresh cxr-public films of patients that are not in the gallery's manifest (no leak).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.config import Settings
from services.embedding import create_encoder, save_checkpoint
from services.errors import ConfigError
from services.evaluation.job import run_eval
from services.evaluation.types import EvalConfig
from services.manifest import read_manifest
from services.splits import read_split
from tests.evaluation.test_job import MAIN_CLASSES, _sub_manifest

FIELDS = ["path", "label", "patient_id", "view", "sex", "age", "source", "origin_dataset"]
N_EXACT, N_NEAR, FRESH_PER_CLASS = 3, 3, 3


def _write(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _reencoded(src: Path) -> bytes:
    """A near-duplicate: the same film shrunk to 80% and saved again as JPEG at quality 70."""
    with Image.open(src) as image:
        grey = image.convert("L")
        small = grey.resize((grey.width * 4 // 5, grey.height * 4 // 5), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=70)
    return buf.getvalue()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, cxr_public: Path) -> dict:
    root = tmp_path_factory.mktemp("queries")
    gallery_dir = root / "gallery"
    gallery_dir.mkdir()
    manifest = _sub_manifest(cxr_public, gallery_dir)
    model = save_checkpoint(create_encoder("vit-tiny", image_size=32, seed=0), root / "model")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXR_DATA_DIR", str(root / "cxr-data"))
        for name in ("CXR_QDRANT_URL", "CXR_QDRANT_PATH", "CXR_QDRANT_API_KEY", "CXR_PATIENT_SALT"):
            mp.delenv(name, raising=False)
        settings = Settings(decode_workers=1)
    # A first in-split run writes the split; its train part is the gallery of the external runs.
    base = run_eval(
        EvalConfig(model=model, manifest=manifest, out_dir=root / "in-split", n_boot=20, baselines=False), settings
    )
    split_file = Path(base["split"]["file"])
    train = read_split(split_file).train

    qdir = root / "external"
    (qdir / "img").mkdir(parents=True)
    rows: list[dict] = []
    leaks: dict[str, tuple[str, str]] = {}  # query path -> (kind, gallery path)
    gallery_rows = {r["path"]: r for r in csv.DictReader((gallery_dir / "manifest.csv").open(encoding="utf-8"))}
    for i, rel in enumerate(train[: N_EXACT + N_NEAR]):
        src = gallery_dir / rel
        exact = i < N_EXACT
        name = f"img/copy{i}.jpg" if exact else f"img/near{i}.jpg"
        if exact:
            shutil.copyfile(src, qdir / name)
        else:
            (qdir / name).write_bytes(_reencoded(src))
        row = dict(gallery_rows[rel], path=name, patient_id=f"external:{i}")  # another patient: ranked, not excluded
        rows.append(row)
        leaks[name] = ("exact" if exact else "near", rel)
    known = {r["patient_id"] for r in gallery_rows.values()}
    public = list(csv.DictReader((cxr_public / "manifest.csv").open(encoding="utf-8")))
    for label in MAIN_CLASSES:
        fresh = [r for r in public if r["label"] == label and r["patient_id"] not in known][-FRESH_PER_CLASS:]
        for r in fresh:
            name = f"img/fresh-{Path(r['path']).name}"
            shutil.copyfile(cxr_public / r["path"], qdir / name)
            rows.append(dict(r, path=name))
    rows[-1]["patient_id"] = ""  # one query without a patient id
    queries = _write(qdir / "manifest.csv", rows)
    return {
        "root": root,
        "manifest": manifest,
        "model": model,
        "settings": settings,
        "split": split_file,
        "queries": queries,
        "leaks": leaks,
        "n_rows": len(rows),
    }


def _eval(setup: dict, name: str, **kw) -> dict:
    cfg = EvalConfig(
        model=setup["model"],
        manifest=setup["manifest"],
        out_dir=setup["root"] / name,
        queries=setup["queries"],
        split_file=setup["split"],
        n_boot=20,
        min_class_queries=2,
        **kw,
    )
    return run_eval(cfg, setup["settings"])


@pytest.fixture(scope="module")
def external(setup: dict) -> dict:
    return _eval(setup, "external")


def test_planted_leaks_are_found_and_nothing_else(setup: dict, external: dict) -> None:
    leak = external["leakage"]
    found = {p["query"]: ("exact", p["gallery"]) for p in leak["exact"]["pairs"]}
    found |= {p["query"]: ("near", p["gallery"]) for p in leak["near_duplicate"]["pairs"]}
    assert found == setup["leaks"]  # every planted copy, paired with its original; no fresh film flagged
    assert leak["exact"]["n_queries"] == N_EXACT and leak["near_duplicate"]["n_queries"] == N_NEAR
    assert all(0 < p["bits"] <= leak["near_duplicate"]["max_bits"] for p in leak["near_duplicate"]["pairs"])
    assert leak["n_queries_checked"] == setup["n_rows"] and not leak["excluded"]
    assert leak["queries_without_patient_id"] == 1
    assert leak["gallery_without_patient_id"] == 0
    md = (setup["root"] / "external" / "report.md").read_text()
    assert f"{N_EXACT} are byte-identical to a gallery image" in md
    assert "img/copy0.jpg" in md and "queries from the query manifest" in md


def test_an_exact_leak_is_retrieved_first_unless_excluded(setup: dict, external: dict) -> None:
    """Why leaks matter: a copy under another patient id finds its original at rank 1 with cosine 1."""
    rankings = {}
    for line in (setup["root"] / "external" / "rankings.jsonl").read_text().splitlines():
        item = json.loads(line)
        rankings[item["query"]] = item["top"][0]
    for query, (kind, original) in setup["leaks"].items():
        if kind == "exact":
            assert rankings[query]["path"] == original and rankings[query]["score"] == pytest.approx(1.0, abs=1e-3)
    excluded = _eval(setup, "external-clean", exclude_leaks=True)
    assert excluded["n_queries_excluded_as_leaks"] == N_EXACT + N_NEAR
    assert excluded["leakage"]["excluded"] and excluded["leakage"]["exact"]["n_queries"] == N_EXACT
    assert excluded["n_queries"] + excluded["n_queries_without_relevant"] == setup["n_rows"] - N_EXACT - N_NEAR
    kept = {json.loads(line)["query"] for line in (setup["root"] / "external-clean" / "rankings.jsonl").open()}
    assert not kept & set(setup["leaks"])


def test_external_report_has_baselines_audit_and_macro_rule(setup: dict, external: dict) -> None:
    assert external["queries"]["manifest"] == str(setup["queries"])
    assert external["n_queries"] == setup["n_rows"]  # every external query has relevant gallery images
    assert external["n_gallery"] == len(read_split(setup["split"]).train)
    raw, chance = external["baselines"]["raw_pixels"], external["chance"]
    for block in (external, raw, chance):
        assert set(block["per_class"]) == set(MAIN_CLASSES)
        assert 0.0 < block["map"]["mean"] <= 1.0
    # Each class holds 3-6 queries: with N = 2 all count in the macro mean, which is their plain average.
    assert external["macro"]["classes"] == sorted(MAIN_CLASSES) and external["macro"]["left_out"] == []
    assert external["macro"]["fallback_all_classes"] is False
    per_class = [external["per_class"][c]["map"]["mean"] for c in MAIN_CLASSES]
    assert external["map"]["macro"]["mean"] == pytest.approx(np.mean(per_class))
    for method in ("model", "raw_pixels"):
        assert external["audit"][method]["overall"]["n_queries"] == setup["n_rows"]
    assert external["split"]["matches_training_split"] is None  # a random-init model records no split


def test_whole_manifest_gallery(setup: dict, external: dict) -> None:
    report = _eval(setup, "external-all", gallery="all", baselines=False)
    assert report["n_gallery"] == len(read_manifest(setup["manifest"]))
    assert report["split"]["gallery"] == "all" and report["split"]["file"] is None
    assert report["collection"] != external["collection"]
    with pytest.raises(ConfigError, match="own gallery"):
        EvalConfig(model=setup["model"], manifest=setup["manifest"], out_dir=setup["root"] / "x", gallery="all")


def test_split_mismatch_is_refused_unless_allowed(setup: dict) -> None:
    trained = save_checkpoint(
        create_encoder("vit-tiny", image_size=32, seed=0), setup["root"] / "trained", recipe={"split_sha256": "ab" * 32}
    )
    cfg = EvalConfig(
        model=trained, manifest=setup["manifest"], out_dir=setup["root"] / "mismatch", split_file=setup["split"]
    )
    with pytest.raises(ConfigError, match="trained on another split"):
        run_eval(cfg, setup["settings"])
    allowed = EvalConfig(**{**cfg.__dict__, "allow_split_mismatch": True, "n_boot": 20, "baselines": False})
    report = run_eval(allowed, setup["settings"])
    assert report["split"]["matches_training_split"] is False and report["split"]["mismatch_allowed"]
    assert "**Split mismatch.**" in (setup["root"] / "mismatch" / "report.md").read_text()


def test_gallery_points_are_matched_by_content_not_path(setup: dict, external: dict) -> None:
    """Move the whole data folder: the same collection is reused (nothing re-indexed), the numbers unchanged."""
    moved = setup["root"] / "moved"
    shutil.copytree(setup["manifest"].parent, moved)
    split = moved / "split.json"
    shutil.copyfile(setup["split"], split)
    cfg = EvalConfig(
        model=setup["model"],
        manifest=moved / "manifest.csv",
        out_dir=setup["root"] / "moved-report",
        queries=setup["queries"],
        split_file=split,
        n_boot=20,
        min_class_queries=2,
        collection=external["collection"],
    )
    report = run_eval(cfg, setup["settings"])
    assert report["indexing"]["reused"] and report["indexing"]["indexed"] == 0
    assert report["n_gallery"] == external["n_gallery"] and report["n_gallery_ignored"] == 0
    assert report["map"] == external["map"]
