"""The pipeline end to end on real files: ingest (with bad files mixed in), re-ingest, query with exclusions."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from services.config import Settings
from services.errors import StoreError
from services.index import QdrantEdgeStore
from services.index.payload import patient_hash
from services.manifest import read_manifest
from services.pipeline import IngestOptions, Ingestor, QueryOptions, Runtime, build_items, search_file
from services.pipeline.refs import file_ref


@pytest.fixture()
def runtime(data_dir: Path, tiny_checkpoint: Path):
    with Runtime(Settings(), model_path=tiny_checkpoint) as rt:
        yield rt


def _ingest(rt: Runtime, items, collection: str = "t"):
    opts = IngestOptions(collection=collection, batch_size=8, decode_workers=2)
    return Ingestor(rt.encoder, rt.store, opts, salt=rt.settings.salt).run(items)


def test_folder_with_bad_files_lands_the_good_ones(runtime: Runtime, public_sample: Path, dicom_dir: Path, tmp_path):
    studies = tmp_path / "studies"
    shutil.copytree(public_sample / "images", studies)
    shutil.copy(dicom_dir / "RG1_UNCR.dcm", studies / "normal" / "chest.dcm")
    (studies / "normal" / "notes.txt").write_text("not an image")
    truncated = (dicom_dir / "RG1_UNCR.dcm").read_bytes()
    (studies / "covid19" / "cut.dcm").write_bytes(truncated[: len(truncated) // 2])
    items, unfound = build_items([studies, tmp_path / "missing"], label_from="folder")
    assert [u.reason for u in unfound] == ["no such file or folder"]

    report = _ingest(runtime, items)

    failed = {Path(f.path).name: f for f in report.failed}
    assert set(failed) == {"notes.txt", "cut.dcm"}
    assert all(f.stage == "decode" and f.reason for f in failed.values())
    assert report.indexed == len(items) - 2
    assert runtime.store.count("t") == report.indexed
    assert report.indexed + report.skipped + len(report.failed) == len(items)

    again = _ingest(runtime, items)
    assert (again.indexed, again.skipped, len(again.failed)) == (0, report.indexed, 2)
    assert runtime.store.count("t") == report.indexed  # never duplicated


def test_labels_from_folder_and_dicom_metadata_in_payload(runtime: Runtime, dicom_dir: Path, tmp_path):
    folder = tmp_path / "normal"
    folder.mkdir()
    shutil.copy(dicom_dir / "RG1_UNCR.dcm", folder / "a.dcm")
    items, _ = build_items([tmp_path], label_from="folder")
    assert _ingest(runtime, items).indexed == 1
    point = next(iter(runtime.store.scroll("t")))
    assert point.payload["label"] == "normal"
    assert point.payload["modality"] == "CR"
    assert point.payload["sop_uid"]
    assert re.fullmatch(r"file:[0-9a-f]{32}", point.payload["source_ref"])
    assert str(tmp_path) not in json.dumps(point.payload)  # the path itself is never stored


def test_query_excludes_itself_and_its_patient(runtime: Runtime, public_sample: Path):
    rows = read_manifest(public_sample / "manifest.csv")
    items, _ = build_items([], manifest=rows)
    assert _ingest(runtime, items).indexed == len(rows)
    query = rows[0]
    salt = runtime.settings.salt

    with_self = search_file(
        query.path,
        encoder=runtime.encoder,
        store=runtime.store,
        salt=salt,
        opts=QueryOptions(collection="t", k=5, exclude_self=False),
    )
    assert with_self.hits[0].payload["source_ref"] == file_ref(query.path, salt)
    assert with_self.hits[0].score == pytest.approx(1.0, abs=1e-3)

    without = search_file(
        query.path,
        encoder=runtime.encoder,
        store=runtime.store,
        salt=salt,
        opts=QueryOptions(collection="t", k=len(rows)),
    )
    assert file_ref(query.path, salt) not in {h.payload["source_ref"] for h in without.hits}
    assert len(without.hits) == len(rows) - 1

    same_patient = [r for r in rows if r.patient_id == query.patient_id]
    excluded = search_file(
        query.path,
        encoder=runtime.encoder,
        store=runtime.store,
        salt=salt,
        opts=QueryOptions(collection="t", k=len(rows), exclude_same_patient=True, patient_id=query.patient_id),
    )
    assert excluded.patient_excluded
    assert patient_hash(query.patient_id, salt) not in {h.payload.get("patient_hash") for h in excluded.hits}
    assert len(excluded.hits) == len(rows) - len(same_patient)


def test_query_filters(runtime: Runtime, public_sample: Path):
    rows = read_manifest(public_sample / "manifest.csv")
    _ingest(runtime, build_items([], manifest=rows)[0])
    result = search_file(
        rows[-1].path,
        encoder=runtime.encoder,
        store=runtime.store,
        salt=runtime.settings.salt,
        opts=QueryOptions(collection="t", k=50, filters=("label=covid19,normal", "view!=AP")),
    )
    assert result.hits
    assert {h.payload["label"] for h in result.hits} <= {"covid19", "normal"}
    assert all(h.payload.get("view") != "AP" for h in result.hits)


def test_refuses_to_mix_models_in_one_collection(data_dir: Path, tiny_checkpoint: Path, public_sample, tmp_path):
    from services.embedding import create_encoder, save_checkpoint

    other = tmp_path / "other"
    save_checkpoint(create_encoder("vit-tiny", image_size=32, embed_dim=64, seed=1), other)
    items = build_items([], manifest=read_manifest(public_sample / "manifest.csv"))[0][:4]
    with Runtime(Settings(), model_path=tiny_checkpoint) as rt:
        assert _ingest(rt, items).indexed == 4
    with Runtime(Settings(), model_path=other) as rt, pytest.raises(StoreError, match="holds vectors of model"):
        _ingest(rt, items)


def test_store_directory_is_the_configured_one(runtime: Runtime, data_dir: Path):
    assert isinstance(runtime.store, QdrantEdgeStore)
    runtime.store.create_collection("x", 8)
    assert (data_dir / "qdrant" / "x").is_dir()
