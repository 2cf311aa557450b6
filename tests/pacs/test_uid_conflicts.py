"""A reused SOP Instance UID never mixes two patients: over real C-STOREs and through the pull's intake, a second
instance under a taken UID with another patient or other pixels is refused (0xC003) or quarantined, the first file
is kept byte for byte, `cxr failures` lists the conflict with both patients' hashes, and the log holds no PHI; a
resend of the same image (header re-stamped, or de-identified again) is still a resend."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from services.index.payload import patient_hash
from services.pacs.acceptance import SUCCESS, UID_CONFLICT
from services.pacs.deid import Deidentifier
from services.pacs.intake import Intake
from services.pacs.pull_batch import Batch, PullOptions, PullReport
from services.pacs.receiver import Receiver, ReceiverConfig
from services.pacs.spool import Spool
from services.pipeline.ledger import Ledger, sop_key
from tests.pacs.dicom_factory import PHI_ID_PREFIX, PHI_NAME_PREFIX, dx_from_jpeg, public_jpegs, save, send
from tests.services import free_port


@pytest.fixture()
def versions(cxr_public: Path, tmp_path: Path) -> dict[str, Path]:
    """One UID in four versions: the first, a resend with a re-stamped header, another patient's film with the
    same pixels, and the same patient's UID over other pixels."""
    jpegs = public_jpegs(cxr_public, 2)
    out = {}
    first = dx_from_jpeg(jpegs[0], 0, patient=1)
    out["first"] = save(first, tmp_path / "first")
    restamped = dx_from_jpeg(jpegs[0], 0, patient=1, study_date="20240301")
    restamped.StudyTime, restamped.InstitutionName = "235959", "Elsewhere"
    out["restamped"] = save(restamped, tmp_path / "restamped")
    out["other_patient"] = save(dx_from_jpeg(jpegs[0], 0, patient=2), tmp_path / "other_patient")
    out["other_pixels"] = save(dx_from_jpeg(jpegs[1], 0, patient=1), tmp_path / "other_pixels")
    uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in out.values()}
    assert len(uids) == 1
    return out


def _intake(settings, *, deid: bool = False, quarantine: bool = False) -> Intake:  # noqa: ANN001
    return Intake(
        Spool(settings.spool_path, min_free_mb=0),
        Ledger(settings.ledger_path),
        collection=settings.collection,
        deidentifier=Deidentifier(settings.salt) if deid else None,
        salt=settings.salt,
        quarantine_conflicts=quarantine,
    )


def _failures() -> list[dict]:
    from cli.main import app

    res = CliRunner().invoke(app, ["failures", "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def _hash(n: int, salt: bytes) -> str:
    return patient_hash(f"{PHI_ID_PREFIX}{n:04d}", salt)  # type: ignore[return-value]


def test_receiver_refuses_a_reused_uid_keeps_the_first_and_lists_both_patients(
    pacs_settings, versions: dict[str, Path], caplog: pytest.LogCaptureFixture
):
    caplog.set_level("DEBUG")
    intake = _intake(pacs_settings)
    cfg = ReceiverConfig(host="127.0.0.1", port=free_port(), allow_aets=("MODALITY",))

    def one(name: str) -> int:
        return next(iter(send([versions[name]], "127.0.0.1", rx.port, called="CXR", calling="MODALITY").values()))

    with Receiver(intake, cfg) as rx:
        assert one("first") == SUCCESS
        uid = str(pydicom.dcmread(versions["first"], stop_before_pixels=True).SOPInstanceUID)
        kept = Spool(pacs_settings.spool_path).path_for(uid)
        first_bytes = kept.read_bytes()
        assert one("other_patient") == UID_CONFLICT
        assert one("other_pixels") == UID_CONFLICT
        assert kept.read_bytes() == first_bytes  # never overwritten
        assert one("other_patient") == UID_CONFLICT  # sent again: the same conflict, recorded once
        assert one("restamped") == SUCCESS  # same patient, same pixels: a resend, replacing the file as before
    assert pydicom.dcmread(kept).StudyTime == "235959"
    assert rx.stats.conflicts == 3 and rx.stats.failed == {UID_CONFLICT: 3}
    ledger = Ledger(pacs_settings.ledger_path)
    assert ledger.get(sop_key(uid), "cxr").state == "received"  # the first instance goes on to be indexed
    failures = _failures()
    assert len(failures) == 2 and {f["stage"] for f in failures} == {"uid-conflict"}
    assert all(f["key"].startswith(f"conflict:{uid}:") for f in failures)
    salt = pacs_settings.salt
    by_reason = {("another patient" in f["reason"]): f["reason"] for f in failures}
    assert f"patient {_hash(1, salt)}" in by_reason[True] and f"patient {_hash(2, salt)}" in by_reason[True]
    assert "other pixels" in by_reason[False] and by_reason[False].count(f"patient {_hash(1, salt)}") == 2
    assert "AE MODALITY at 127.0.0.1" in by_reason[True]
    assert ledger.retry() == []  # `cxr retry --all` leaves conflicts to a person
    text = caplog.text
    assert "UID conflict" in text and PHI_ID_PREFIX not in text and PHI_NAME_PREFIX not in text
    assert PHI_ID_PREFIX not in json.dumps(failures)


def test_with_deidentification_a_resend_is_a_resend_and_a_conflict_is_still_found(
    pacs_settings, versions: dict[str, Path]
):
    intake = _intake(pacs_settings, deid=True)
    first = intake.accept(versions["first"].read_bytes(), origin="receiver")
    assert first.ok and first.new
    again = intake.accept(versions["restamped"].read_bytes(), origin="receiver")  # de-identified afresh
    assert again.ok and not again.new and not again.conflict
    clash = intake.accept(versions["other_patient"].read_bytes(), origin="receiver")
    assert clash.status == UID_CONFLICT and clash.conflict
    (row,) = Ledger(pacs_settings.ledger_path).failures()
    assert row.extra["first_patient_hash"] == _hash(1, pacs_settings.salt)  # read back from the pseudonym
    assert row.extra["patient_hash"] == _hash(2, pacs_settings.salt)
    assert row.key.startswith(f"conflict:{first.sop_uid}:")


def test_the_pull_reports_a_conflict_as_permanent_records_it_once_and_goes_on(pacs_settings, versions: dict[str, Path]):
    intake = _intake(pacs_settings)
    report = PullReport(mode="dicomweb")
    batch = Batch(intake, report, None, PullOptions(url="http://pacs.invalid/dicom-web"))
    uid = str(pydicom.dcmread(versions["first"], stop_before_pixels=True).SOPInstanceUID)
    where = f"http://pacs.invalid/dicom-web/studies/1/series/2/instances/{uid}"
    assert batch.take(versions["first"].read_bytes(), ref=uid, where=where, expected_uid=uid).ok
    out = batch.take(versions["other_pixels"].read_bytes(), ref=uid, where=where, expected_uid=uid)
    assert out.status == UID_CONFLICT and out.permanent  # the changes feed moves on past it
    assert report.stored == 1 and [(f.ref, f.permanent) for f in report.failed] == [(uid, True)]
    ledger = Ledger(pacs_settings.ledger_path)
    assert ledger.get(sop_key(uid), "cxr").state == "received"  # the first row is untouched
    (row,) = ledger.failures()
    assert row.stage == "uid-conflict" and row.origin == "pull" and where in row.reason


def test_quarantine_keeps_the_second_copy_aside_and_answers_success(pacs_settings, versions: dict[str, Path]):
    intake = _intake(pacs_settings, quarantine=True)
    assert intake.accept(versions["first"].read_bytes(), origin="receiver").ok
    out = intake.accept(versions["other_patient"].read_bytes(), origin="receiver")
    assert out.status == SUCCESS and out.conflict and not out.new
    spool = Spool(pacs_settings.spool_path)
    assert [p.name for p in spool.instances()] == [f"{out.sop_uid}.dcm"]  # only the first is an instance
    assert out.path is not None and out.path.parent.name == ".conflicts"
    assert out.path.read_bytes() == versions["other_patient"].read_bytes()
    (row,) = Ledger(pacs_settings.ledger_path).failures()
    assert row.path == str(out.path) and "quarantined" in row.reason
