"""Payloads carry an opaque source_ref, never a path: hospital exports name folders after the patient.

Real files (public JPEGs, a pydicom-data radiograph), the real `cxr index`/`cxr search` processes, the real embedded
store and the real ledger.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from services.config import Settings
from services.index import QdrantEdgeStore
from services.pipeline.ledger import Ledger, file_key, sop_key
from services.pipeline.refs import file_ref, spool_ref
from services.pipeline.stored_image import resolve_source
from services.pipeline.submission import ingest_item

REPO = Path(__file__).resolve().parents[2]
PATIENT_FOLDER = "DOE^JOHN_19600101_MRN12345"
# Every part of the folder name that identifies the patient; none may reach a payload.
PHI_PARTS = ("DOE", "JOHN", "19600101", "MRN12345", PATIENT_FOLDER)


def _cxr(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture()
def patient_export(tmp_path: Path, cxr_public: Path, dicom_dir: Path) -> Path:
    """export/DOE^JOHN_19600101_MRN12345/normal/*: three real JPEGs, a real DICOM and one file that is no image."""
    folder = tmp_path / "export" / PATIENT_FOLDER / "normal"
    folder.mkdir(parents=True)
    for i, src in enumerate(sorted((cxr_public / "images" / "normal").iterdir())[:3]):
        shutil.copy(src, folder / f"{PATIENT_FOLDER}_{i}.jpg")
    shutil.copy(dicom_dir / "RG1_UNCR.dcm", folder / f"{PATIENT_FOLDER}_chest.dcm")
    (folder / f"{PATIENT_FOLDER}_notes.txt").write_text("not an image")
    return tmp_path / "export"


def test_no_part_of_a_patient_named_folder_reaches_any_payload(
    patient_export: Path, data_dir: Path, tiny_checkpoint: Path
) -> None:
    env = {"CXR_DATA_DIR": str(data_dir), "CXR_MODEL": str(tiny_checkpoint), "CXR_TORCH_THREADS": "1"}
    proc = _cxr(["index", str(patient_export), "--label-from", "folder", "--collection", "phi"], env)
    assert proc.returncode == 3, proc.stdout + proc.stderr  # the .txt fails, the rest lands

    # The logs name the patient folder only in the per-file error line the user asked for (their own path).
    for line in (proc.stdout + proc.stderr).splitlines():
        if any(part in line for part in PHI_PARTS):
            assert line.strip().startswith("failed [decode]") and "_notes.txt" in line, line

    settings = Settings()
    store = QdrantEdgeStore(settings.store_path)
    try:
        points = list(store.scroll("phi"))
    finally:
        store.close()
    assert len(points) == 4
    for point in points:
        for key, value in point.payload.items():  # every stored value, whatever its field
            for part in PHI_PARTS:
                assert part not in str(value), f"{part!r} in payload field {key!r}: {value!r}"
        assert str(patient_export) not in json.dumps(point.payload)
        assert "source_uri" not in point.payload
        assert point.payload["label"] == "normal"

    # Each ref resolves back to its file, on this machine, through the ledger.
    ledger = Ledger(settings.ledger_path)
    resolved = {resolve_source(ledger, p.payload) for p in points}
    indexed = {p for p in (patient_export / PATIENT_FOLDER / "normal").iterdir() if p.suffix != ".txt"}
    assert resolved == indexed
    assert resolve_source(settings, points[0].payload) in indexed  # Settings works too (opens the ledger)
    for p in points:
        assert p.payload["source_ref"] == file_ref(resolve_source(ledger, p.payload), settings.salt)

    # `cxr search` shows the resolved file name to the user; its JSON payloads still carry only the ref.
    query = patient_export / PATIENT_FOLDER / "normal" / f"{PATIENT_FOLDER}_0.jpg"
    table = _cxr(["search", str(query), "--collection", "phi", "--k", "3", "--include-self"], env)
    assert table.returncode == 0, table.stderr
    assert f"{PATIENT_FOLDER}_0.jpg" in table.stdout
    as_json = _cxr(["search", str(query), "--collection", "phi", "--k", "3", "--json"], env)
    assert as_json.returncode == 0, as_json.stderr
    hits = json.loads(as_json.stdout)
    assert len(hits) == 3
    assert not any(part in json.dumps([h["payload"] for h in hits]) for part in PHI_PARTS)


def test_refs_are_keyed_hashes_of_the_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / PATIENT_FOLDER / "a.dcm"
    ref = file_ref(path, b"salt-one")
    assert ref.startswith("file:") and len(ref) == len("file:") + 32
    assert not any(part in ref for part in PHI_PARTS)
    assert ref == file_ref(str(path), b"salt-one")
    assert ref != file_ref(path, b"salt-two")  # without the salt the ref cannot be recomputed from a guess
    monkeypatch.chdir(tmp_path)
    assert file_ref(Path(PATIENT_FOLDER) / "a.dcm", b"salt-one") == ref  # relative paths are made absolute
    undecodable = tmp_path / os.fsdecode(b"\xff\xfename.dcm")  # not UTF-8: still a ref, no crash
    assert file_ref(undecodable, b"salt-one").startswith("file:")


def test_resolving_spool_refs_legacy_uris_and_unknown_refs(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    spooled = tmp_path / "spool" / "1.2.840.99.1.dcm"
    ledger.record(sop_key("1.2.840.99.1"), spooled, origin="dicom", collection="cxr")
    # A spool ref with no refs row falls back to the instance's ledger row.
    assert resolve_source(ledger, {"source_ref": spool_ref("1.2.840.99.1")}) == spooled
    ledger.put_refs([(file_ref(tmp_path / "x.png", b"s"), str(tmp_path / "x.png"))])
    assert resolve_source(ledger, {"source_ref": file_ref(tmp_path / "x.png", b"s")}) == tmp_path / "x.png"
    assert resolve_source(ledger, {"source_ref": "file:" + "0" * 32}) is None  # another machine's ref
    assert resolve_source(ledger, {"source_ref": "spool:1.2.3"}) is None
    assert resolve_source(ledger, {"label": "normal"}) is None
    assert resolve_source(ledger, {"source_uri": (tmp_path / "old.png").as_uri()}) == tmp_path / "old.png"

    # The queue's ingest item of a received instance carries the spool ref (and a file's item none).
    item = ledger.get(sop_key("1.2.840.99.1"))
    assert item is not None and ingest_item(item).ref == "spool:1.2.840.99.1"
    key = file_key(tmp_path / "y.png", b"s")
    ledger.record(key, tmp_path / "y.png", origin="file", collection="cxr")
    assert ingest_item(ledger.get(key)).ref is None  # type: ignore[arg-type]
    # A queued file's key is its payload ref, so its own row resolves it with no refs row.
    assert (
        key == file_ref(tmp_path / "y.png", b"s") and resolve_source(ledger, {"source_ref": key}) == tmp_path / "y.png"
    )


def test_a_stored_points_pixels_come_from_its_ref_or_say_why_not(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from services.errors import StoredImageError
    from services.pipeline.stored_image import load_stored_pixels

    ledger = Ledger(tmp_path / "ledger.sqlite3")
    film = tmp_path / "film.png"
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1)), mode="L").save(film)
    ledger.put_refs([(file_ref(film, b"s"), str(film))])
    pixels = load_stored_pixels(ledger, {"source_ref": file_ref(film, b"s")}, "p1")
    assert pixels.shape == (48, 64) and pixels.dtype == np.float32 and 0 <= pixels.min() < pixels.max() <= 1
    with pytest.raises(StoredImageError, match="too small"):  # the pixel guard applies
        load_stored_pixels(ledger, {"source_ref": file_ref(film, b"s")}, "p1", min_side=64)
    with pytest.raises(StoredImageError, match="not in this server's ledger"):  # another machine's ref
        load_stored_pixels(ledger, {"source_ref": "file:" + "0" * 32}, "p2")
    with pytest.raises(StoredImageError, match="it has no source"):
        load_stored_pixels(ledger, {"label": "normal"}, "p3")
    film.unlink()
    with pytest.raises(StoredImageError, match="point p1 is no longer kept on this server"):
        load_stored_pixels(ledger, {"source_ref": file_ref(film, b"s")}, "p1")


def test_a_ledger_that_cannot_record_fails_those_files_and_writes_nothing(
    tmp_path: Path, cxr_public: Path, tiny_checkpoint: Path, data_dir: Path
) -> None:
    """A point whose ref cannot be recorded is never written: nobody could find its file again."""
    from services.pipeline import IngestOptions, Ingestor, Runtime, build_items

    folder = tmp_path / "studies"
    folder.mkdir()
    for src in sorted((cxr_public / "images" / "normal").iterdir())[:2]:
        shutil.copy(src, folder / src.name)
    items, _ = build_items([folder])
    ledger = Ledger(tmp_path / "busy.sqlite3", busy_timeout_s=0.05)
    holder = sqlite3.connect(tmp_path / "busy.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock past our wait
    try:
        with Runtime(Settings(), model_path=tiny_checkpoint) as rt:
            opts = IngestOptions(collection="busy", batch_size=4, decode_workers=1)
            report = Ingestor(rt.encoder, rt.store, opts, salt=rt.settings.salt, refs=ledger.put_refs).run(items)
            assert rt.store.count("busy") == 0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert report.indexed == 0
    assert [(f.stage, f.reason.split(" (")[0]) for f in report.failed] == [
        ("upsert", "source reference not recorded")
    ] * 2


def test_a_spooled_instance_indexed_by_the_queue_jobs_carries_its_spool_ref(
    data_dir: Path, tiny_checkpoint: Path, dicom_dir: Path
) -> None:
    """The receiver's path: spool file + ledger row, then the queue's embed and write jobs (no Celery needed)."""
    import pydicom

    from services.embedding import BatchEncoder
    from services.pacs.spool import Spool
    from services.pipeline.batch_jobs import embed_keys, write_points
    from services.pipeline.ingest import IngestOptions

    settings = Settings()
    data = (dicom_dir / "RG1_UNCR.dcm").read_bytes()
    uid = str(pydicom.dcmread(dicom_dir / "RG1_UNCR.dcm", stop_before_pixels=True).SOPInstanceUID)
    path = Spool(settings.spool_path, min_free_mb=0).write(uid, data)
    ledger = Ledger(settings.ledger_path)
    ledger.record(sop_key(uid), path, origin="dicom", collection="spooled")
    encoder = BatchEncoder.from_checkpoint(tiny_checkpoint, batch_size=4, bf16=False)
    out = embed_keys(
        ledger,
        encoder,
        [sop_key(uid)],
        opts=IngestOptions(collection="spooled"),
        salt=settings.salt,
        max_attempts=3,
        collection="spooled",
    )
    store = QdrantEdgeStore(settings.store_path)
    try:
        assert write_points(store, ledger, out.batches[0]).indexed == 1
        (point,) = store.scroll("spooled")
    finally:
        store.close()
    assert point.payload["source_ref"] == f"spool:{uid}"
    assert resolve_source(ledger, point.payload) == path
