"""Files uploaded to POST /v1/index follow the spool's rules: de-identified when CXR_SPOOL_DEIDENTIFY is on, and
deleted once indexed (or failed) unless CXR_API_UPLOAD_RETENTION_H keeps them; `cxr status` counts them. The real
app, real Redis, a real `cxr worker` (its sweep deletes them), real DICOM and JPEG files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pydicom

from cli.serve_cmd import make_submitter
from services.pipeline.ledger import Ledger
from services.pipeline.uploads import release_uploads, uploads_dir
from tests.api.conftest import make_client
from tests.services import wait_for
from tests.workers.conftest import WorkerProcess, cxr, queue_env, real_images, settings_of, wait_ledger

PHI = ("DOE^JOHN", "MRN12345", "19600101")


def patient_dicom(dicom_dir: Path, **changes: str) -> bytes:
    """A real CR (pydicom-data RG1) carrying a patient's name, id and birth date."""
    ds = pydicom.dcmread(dicom_dir / "RG1_UNCR.dcm")
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PHI
    for key, value in changes.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def status(env: dict[str, str]) -> dict:
    proc = cxr(env, "status", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["uploads"]


def test_uploads_are_de_identified_counted_and_deleted_once_indexed(
    tmp_path: Path, cxr_public: Path, dicom_dir: Path, tiny_checkpoint: Path, redis_db_url: str, workers: list
) -> None:
    env = queue_env(tmp_path / "data", redis_db_url, tiny_checkpoint, spool_deidentify="true")
    settings = settings_of(env)
    film = real_images(cxr_public, 1)[0]
    files = [
        ("file", ("DOE^JOHN_MRN12345.dcm", patient_dicom(dicom_dir), "application/dicom")),
        ("file", ("film.jpg", film.read_bytes(), "image/jpeg")),
        ("file", ("burned.dcm", patient_dicom(dicom_dir, BurnedInAnnotation="YES"), "application/dicom")),
    ]
    with make_client(settings, tiny_checkpoint, submitter=make_submitter(settings)) as client:
        r = client.post("/v1/index", files=files)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["accepted"] == 2
    assert [(x["file"], x["code"]) for x in body["refused"]] == [("#3", "cannot_deidentify")]

    kept = sorted(uploads_dir(settings).iterdir())
    assert sorted(p.suffix for p in kept) == [".dcm", ".jpg"]
    dicom = next(p for p in kept if p.suffix == ".dcm")
    raw = dicom.read_bytes()
    assert not any(part.encode() in raw for part in PHI)  # nothing of the patient is kept on disk
    ds = pydicom.dcmread(dicom)
    assert ds.PatientID.startswith("CXRPH-") and ds.SOPInstanceUID.startswith("2.25.")
    assert status(env)["count"] == 2

    workers.append(WorkerProcess(env, tmp_path / "worker.log"))
    wait_ledger(settings, lambda n: n["indexed"] == 2, timeout=120, what="the uploads")
    wait_for(lambda: not list(uploads_dir(settings).iterdir()), timeout=30, what="the sweep to delete the uploads")
    assert status(env) == {"count": 0, "bytes": 0, "oldest_age_s": None}
    workers[0].stop()
    with make_client(settings, tiny_checkpoint) as client:
        client.app.state.api.wait_ready(60)
        hits = client.post("/v1/search", files={"file": ("q.jpg", film.read_bytes(), "image/jpeg")}).json()
        point = hits["hits"][0]["id"]
        gone = client.get(f"/v1/points/{point}/thumbnail")
    assert gone.status_code == 409 and "no longer kept" in gone.json()["detail"], gone.text


def test_a_retention_keeps_uploads_until_it_has_passed(
    tmp_path: Path, cxr_public: Path, tiny_checkpoint: Path, redis_db_url: str, workers: list
) -> None:
    env = queue_env(tmp_path / "data", redis_db_url, tiny_checkpoint, api_upload_retention_h="2")
    settings = settings_of(env)
    film = real_images(cxr_public, 1)[0]
    with make_client(settings, tiny_checkpoint, submitter=make_submitter(settings)) as client:
        r = client.post("/v1/index", files={"file": ("film.jpg", film.read_bytes(), "image/jpeg")})
    assert r.status_code == 202, r.text
    (kept,) = uploads_dir(settings).iterdir()
    assert kept.read_bytes() == film.read_bytes()  # not a DICOM, and de-identification is off: kept as sent
    workers.append(WorkerProcess(env, tmp_path / "worker.log"))
    wait_ledger(settings, lambda n: n["indexed"] == 1, timeout=120, what="the upload")
    workers[0].stop()  # its sweep ran many times meanwhile (every 0.5 s)
    assert kept.exists()
    summary = status(env)
    assert summary["count"] == 1 and summary["bytes"] == kept.stat().st_size and summary["oldest_age_s"] >= 0
    ledger = Ledger(settings.ledger_path)
    assert release_uploads(settings, ledger) == 0
    assert release_uploads(settings, ledger, now=kept.stat().st_mtime + 2 * 3600 + 60) == 1
    assert not kept.exists()


def test_an_upload_no_item_names_is_deleted_once_an_hour_old(tmp_path: Path, cxr_public: Path) -> None:
    import os
    import time

    from services.config import Settings
    from services.pipeline.uploads import keep_upload

    settings = Settings(data_dir=tmp_path / "data", patient_salt="s")
    film = real_images(cxr_public, 1)[0].read_bytes()
    orphan = keep_upload(uploads_dir(settings), film, "jpeg")  # kept, then the API died before recording it
    ledger = Ledger(settings.ledger_path)
    assert release_uploads(settings, ledger) == 0  # a fresh one may still be on its way to the ledger
    hour_ago = time.time() - 3700
    os.utime(orphan, (hour_ago, hour_ago))
    assert release_uploads(settings, ledger) == 1 and not orphan.exists()
