"""The audit trail over the real app and the real store: every /v1 answer is recorded before it is sent (actor,
action, outcome, client, objects), refusals too; the chain shows an edited or deleted record; no patient data or
path reaches it; and an answer whose record cannot be written is not sent."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import threading
from pathlib import Path

import pydicom

from services.governance.audit import AuditLog
from tests.api.conftest import QUERY_DICOM, Indexed, make_client

PHI = ("DOE^JANE", "MRN-778899", "19491231")


def _film(indexed: Indexed) -> bytes:
    return (indexed.sample / indexed.rows[0]["path"]).read_bytes()


def _new(indexed: Indexed, before: int) -> list:
    return AuditLog(indexed.settings.audit_path).records()[before:]


def test_searches_views_and_refusals_are_recorded_before_the_answer(indexed: Indexed) -> None:
    query = _film(indexed)
    before = len(AuditLog(indexed.settings.audit_path).records())
    with make_client(indexed.settings, indexed.model) as c:
        c.app.state.api.wait_ready(60)
        found = c.post("/v1/search?k=3", files={"file": ("q.jpg", query, "image/jpeg")})
        assert found.status_code == 200, found.text
        ids = [h["id"] for h in found.json()["hits"]]
        assert c.get(f"/v1/points/{ids[0]}/thumbnail").status_code == 200
        assert c.post("/v1/search", files={"file": ("x.txt", b"hello", "text/plain")}).status_code == 415
        assert c.get("/livez").status_code == 200  # not a /v1 request: not recorded
    new = _new(indexed, before)
    assert [(r.action, r.outcome) for r in new] == [
        ("api.search", "ok"),
        ("api.get_thumbnail", "ok"),
        ("api.search", "415"),
    ]
    search, view, refused = new
    assert search.objects["query_sha256"] == hashlib.sha256(query).hexdigest()
    assert search.objects["results"] == ids
    assert view.objects == {"point_id": ids[0]}
    assert refused.objects == {}
    assert {r.actor for r in new} == {"anonymous"} and {r.client for r in new} == {"testclient"}
    assert AuditLog(indexed.settings.audit_path).verify().ok


def test_no_patient_detail_or_path_reaches_the_audit_trail(indexed: Indexed, dicom_dir: Path) -> None:
    ds = pydicom.dcmread(dicom_dir / QUERY_DICOM)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PHI
    buf = io.BytesIO()
    ds.save_as(buf)
    with make_client(indexed.settings, indexed.model) as c:
        c.app.state.api.wait_ready(60)
        name = "DOE^JANE_MRN-778899.dcm"
        assert c.post("/v1/search", files={"file": (name, buf.getvalue(), "application/dicom")}).status_code == 200
        assert c.post("/v1/render", files={"file": (name, buf.getvalue(), "application/dicom")}).status_code == 200
    raw = b"".join(p.read_bytes() for p in indexed.settings.data_dir.glob("audit.sqlite3*"))
    for part in (*PHI, str(indexed.settings.data_dir), str(dicom_dir), ds.SOPInstanceUID, ds.StudyInstanceUID):
        assert part.encode() not in raw, part


def test_the_chain_shows_an_edited_or_a_deleted_record(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.sqlite3")
    for i in range(5):
        log.record("token:reader", "api.search", objects={"results": [f"id-{i}"]})
    good = log.verify()
    assert (good.ok, good.count) == (True, 5)
    db = sqlite3.connect(tmp_path / "audit.sqlite3")
    db.execute("""UPDATE records SET objects='{"results":["other"]}' WHERE seq=3""")
    db.commit()
    bad = log.verify()
    assert not bad.ok and bad.count == 2 and "record 3 was changed" in bad.problem
    db.execute("DELETE FROM records WHERE seq=3")
    db.commit()
    gone = log.verify()
    assert not gone.ok and "record 3 is missing" in gone.problem


def test_an_answer_whose_record_cannot_be_written_is_not_sent(indexed: Indexed, tmp_path: Path) -> None:
    settings = indexed.with_(data_dir=tmp_path / "data", qdrant_path=indexed.settings.store_path)
    query = _film(indexed)
    with make_client(settings, indexed.model) as c:
        c.app.state.api.wait_ready(60)
        held, release = threading.Event(), threading.Event()

        def hold_the_write_lock() -> None:  # another process's writer, stuck past the audit's busy timeout
            db = sqlite3.connect(settings.audit_path, isolation_level=None)
            db.execute("BEGIN IMMEDIATE")
            held.set()
            release.wait(30)
            db.execute("ROLLBACK")

        holder = threading.Thread(target=hold_the_write_lock)
        holder.start()
        held.wait(10)
        try:
            r = c.post("/v1/search", files={"file": ("q.jpg", query, "image/jpeg")})
        finally:
            release.set()
            holder.join()
        assert r.status_code == 503 and "audit trail" in r.json()["detail"] and "hits" not in r.text
        assert c.post("/v1/search", files={"file": ("q.jpg", query, "image/jpeg")}).status_code == 200


def test_admin_routes_read_the_trail_and_forget_a_patient(indexed: Indexed, tmp_path: Path, dicom_dir: Path) -> None:
    from services.pipeline import IngestOptions, Ingestor, Runtime, build_items

    settings = indexed.with_(data_dir=tmp_path / "data")
    folder = tmp_path / "films"
    folder.mkdir()
    for name in ("RG1_UNCI.dcm", "RG1_UNCR.dcm"):
        (folder / name).write_bytes((dicom_dir / name).read_bytes())
    (folder / "other.jpg").write_bytes(_film(indexed))
    patient = str(pydicom.dcmread(dicom_dir / "RG1_UNCR.dcm", stop_before_pixels=True).PatientID)
    with Runtime(settings, model_path=indexed.model) as rt:
        opts = IngestOptions(collection=settings.collection, batch_size=4, decode_workers=1)
        items, _ = build_items([folder])
        assert Ingestor(rt.encoder, rt.store, opts, salt=settings.salt, refs=rt.ledger.put_refs).run(items).indexed == 3
    with make_client(settings, indexed.model) as c:
        c.app.state.api.wait_ready(60)
        dry = c.post("/v1/admin/forget", json={"patient_id": patient, "dry_run": True})
        assert dry.status_code == 200 and dry.json()["points"] == {settings.collection: 2}
        done = c.post("/v1/admin/forget", json={"patient_id": patient})
        assert done.status_code == 200 and done.json()["points"] == {settings.collection: 2}
        assert c.get("/v1/collections").json()["collections"][0]["count"] == 1
        trail = c.get("/v1/admin/audit", params={"action": "api.forget"}).json()
        assert trail["verified"] and [r["objects"]["dry_run"] for r in trail["records"]] == [True, False]
        assert patient not in json.dumps(trail)
        assert c.post("/v1/admin/forget", json={"patient_id": patient, "sop_uid": "1.2.3"}).status_code == 422
