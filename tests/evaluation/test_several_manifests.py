"""Train and evaluate on two joined manifests through the real CLI: one patient-level split of the union that
records both hashes, a label only the second manifest brings (`lung_opacity`) wherever labels appear, a merge that
names it, and queries restricted to one manifest."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.manifest import file_sha256
from services.splits import read_split
from tests.evaluation.test_job import _sub_manifest

REPO = Path(__file__).resolve().parents[2]
PNEUMONIA = "pneumonia_bacterial,pneumonia_viral,lung_opacity=pneumonia"


def _adult_sample(src: Path, dest: Path, per_label: int = 15) -> Path:
    """`per_label` real rows of each cxr-adult label, images copied beside the manifest."""
    with (src / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields, rows = list(reader.fieldnames or []), list(reader)
    chosen: list[dict] = []
    for label in sorted({r["label"] for r in rows}):
        chosen += [r for r in rows if r["label"] == label][:per_label]
    for row in chosen:
        (dest / row["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / row["path"], dest / row["path"])
    with (dest / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(chosen)
    return dest / "manifest.csv"


def _cxr(tmp: Path, *args: str) -> None:
    env = {**os.environ, "CXR_DATA_DIR": str(tmp / "cxr-data"), "CXR_INFERENCE_BACKEND": "eager"}
    env.pop("CXR_QDRANT_URL", None)
    proc = subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def joined(tmp_path_factory: pytest.TempPathFactory, cxr_public: Path, cxr_adult: Path) -> dict:
    tmp = tmp_path_factory.mktemp("joined")
    (tmp / "public").mkdir()
    public = _sub_manifest(cxr_public, tmp / "public")
    adult = _adult_sample(cxr_adult, tmp / "adult")
    both = ["--manifest", str(public), "--manifest", str(adult)]
    _cxr(tmp, "train", *both, "--model", "vit-tiny", "--image-size", "32", "--steps", "6", "--batch-size", "16",
         "--val-every", "6", "--ckpt-every", "6", "--min-class-images", "5", "--threads", "1", "--out",
         str(tmp / "run"))  # fmt: skip
    common = ["--model", str(tmp / "run"), *both, "--no-baselines", "--n-boot", "100"]
    _cxr(tmp, "eval", *common, "--merge", PNEUMONIA, "--out", str(tmp / "merged"))
    _cxr(tmp, "eval", *common, "--query-manifest", str(public), "--out", str(tmp / "public-only"))
    return {"tmp": tmp, "public": public, "adult": adult}


def test_the_union_is_split_by_patient_and_the_split_records_each_manifest(joined: dict) -> None:
    split = read_split(joined["tmp"] / "run" / "split.json")
    assert split.manifests == {
        "public/manifest.csv": file_sha256(joined["public"]),
        "adult/manifest.csv": file_sha256(joined["adult"]),
    }
    every = split.train + split.val + split.test
    assert {path.split("/")[0] for path in every} == {"public", "adult"}
    recipe = json.loads((joined["tmp"] / "run" / "config.json").read_text())["encoder"]["recipe"]
    assert recipe["manifest"] == [str(joined["public"]), str(joined["adult"])]
    assert recipe["sampler"] == "label_source" and "lung_opacity" in recipe["classes"]


def test_a_merge_names_what_it_grouped_and_the_new_label_is_reported(joined: dict) -> None:
    report = json.loads((joined["tmp"] / "merged" / "report.json").read_text())
    merged = report["merges"]["pneumonia"]
    assert set(merged["merged"]) == {"pneumonia_bacterial", "pneumonia_viral", "lung_opacity"}
    assert merged["absent"] == []
    assert "pneumonia" in report["per_class"] and "lung_opacity" not in report["per_class"]
    assert report["split"]["manifests"] == read_split(joined["tmp"] / "run" / "split.json").manifests
    markdown = (joined["tmp"] / "merged" / "report.md").read_text()
    assert "Label `pneumonia` merges pneumonia_bacterial, pneumonia_viral, lung_opacity" in markdown
    assert "`public/manifest.csv`" in markdown and "`adult/manifest.csv`" in markdown


def test_queries_can_be_restricted_to_one_joined_manifest(joined: dict) -> None:
    report = json.loads((joined["tmp"] / "public-only" / "report.json").read_text())
    lines = [json.loads(line) for line in (joined["tmp"] / "public-only" / "rankings.jsonl").read_text().splitlines()]
    assert lines and all(line["query"].startswith("public/") for line in lines)
    gallery = {item["path"].split("/")[0] for line in lines for item in line["top"]}
    assert gallery == {"public", "adult"}  # the gallery stays the union's train split
    assert "lung_opacity" not in report["per_class"]  # no adult query
    assert report["queries"]["only_from_manifests"] == [str(joined["public"])]
