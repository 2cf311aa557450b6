"""The acceptance rule, the de-identification profile and the spool reconciliation, on generated instances."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from services.pacs.acceptance import (
    CR_IMAGE_STORAGE,
    DX_FOR_PRESENTATION,
    NOT_A_CHEST_RADIOGRAPH,
    SECONDARY_CAPTURE,
    SOP_CLASS_MISMATCH,
    refusal,
    series_refusal,
)
from services.pacs.deid import Deidentifier
from services.pacs.intake import reconcile_spool
from services.pacs.spool import Spool
from services.pipeline.ledger import Ledger, sop_key
from tests.pacs.conftest import dx_files


def _ds(sop_class: str, modality: str | None, body_part: str | None) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    if modality is not None:
        ds.Modality = modality
    if body_part is not None:
        with warnings.catch_warnings():  # a lowercase code string, as some modalities send: pydicom notes it
            warnings.filterwarnings("ignore", message="Invalid value for VR CS", category=UserWarning)
            ds.BodyPartExamined = body_part
    return ds


@pytest.mark.parametrize(
    ("sop_class", "modality", "body_part", "expected"),
    [
        (CR_IMAGE_STORAGE, "CR", "CHEST", None),
        (CR_IMAGE_STORAGE, "CR", "chest", None),
        (DX_FOR_PRESENTATION, "DX", "THORAX", None),
        (DX_FOR_PRESENTATION, "DX", None, None),  # chest rooms often leave it empty
        (DX_FOR_PRESENTATION, "DX", "", None),
        (CR_IMAGE_STORAGE, "CR", "EXTREMITY", NOT_A_CHEST_RADIOGRAPH),
        (CR_IMAGE_STORAGE, "CT", "CHEST", NOT_A_CHEST_RADIOGRAPH),
        (SECONDARY_CAPTURE, "OT", "CHEST", None),
        (SECONDARY_CAPTURE, "OT", None, NOT_A_CHEST_RADIOGRAPH),  # an SC must say it is a chest
        (SECONDARY_CAPTURE, "MR", "CHEST", NOT_A_CHEST_RADIOGRAPH),
        ("1.2.840.10008.5.1.4.1.1.2", "CT", "CHEST", NOT_A_CHEST_RADIOGRAPH),  # CT Image Storage
    ],
)
def test_acceptance_rule(sop_class: str, modality: str | None, body_part: str | None, expected: int | None):
    got = refusal(_ds(sop_class, modality, body_part))
    assert (got[0] if got else None) == expected
    if got:
        assert got[1]  # a reason to log and to send back in ErrorComment


def test_a_data_set_sent_under_another_sop_class_is_refused():
    assert refusal(_ds(CR_IMAGE_STORAGE, "CR", "CHEST"), sent_as=DX_FOR_PRESENTATION)[0] == SOP_CLASS_MISMATCH


def test_series_records_are_filtered_before_fetching():
    assert series_refusal("CR", "CHEST") is None and series_refusal("DX", None) is None
    assert series_refusal("CT", "CHEST") and series_refusal("CR", "KNEE")


def test_deidentification_cleans_nested_items_private_tags_and_keeps_uid_links(dx_dir: Path):
    ds = pydicom.dcmread(dx_files(dx_dir, 1)[0])
    ref = Dataset()
    ref.ReferencedSOPClassUID = CR_IMAGE_STORAGE
    ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    ref.PerformingPhysicianName = "Nested^Name"
    ds.ReferencedImageSequence = Sequence([ref])
    ds.add_new(0x00091001, "LO", "private vendor note")
    ds.add_new(0x60003000, "OB", b"\x00" * 8)  # overlay data
    original = str(ds.SOPInstanceUID)
    deid = Deidentifier(b"salt-a")
    deid.apply(ds)
    assert ds.SOPInstanceUID == deid.uid(original) == ds.file_meta.MediaStorageSOPInstanceUID
    item = ds.ReferencedImageSequence[0]
    assert item.ReferencedSOPInstanceUID == ds.SOPInstanceUID  # the reference still points at the same instance
    assert item.ReferencedSOPClassUID == CR_IMAGE_STORAGE  # DICOM-root UIDs are kept
    assert "PerformingPhysicianName" not in item
    assert 0x00091001 not in ds and 0x60003000 not in ds
    assert not ds.PatientName and "PatientName" in ds and str(ds.PatientID).startswith("CXRPH-")
    assert "InstitutionName" not in ds and not ds.StudyDate and "StudyDate" in ds
    assert Deidentifier(b"salt-b").uid(original) != deid.uid(original)  # keyed: another salt, other UIDs
    assert len(deid.uid(original)) <= 64


def test_burned_in_annotation_is_refused_when_deidentifying(dx_dir: Path):
    from services.pacs.deid import BurnedInAnnotationError

    ds = pydicom.dcmread(dx_files(dx_dir, 1)[0])
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(BurnedInAnnotationError):
        Deidentifier(b"salt").apply(ds)


def test_reconciliation_records_orphans_and_never_opens_a_fifo(tmp_path: Path, dx_dir: Path):
    spool = Spool(tmp_path / "spool", min_free_mb=0)
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    data = dx_files(dx_dir, 1)[0].read_bytes()
    uid = str(pydicom.dcmread(dx_files(dx_dir, 1)[0], stop_before_pixels=True).SOPInstanceUID)
    spool.write(uid, data)  # a crash after the rename, before the ledger commit
    os.mkfifo(spool.root / "1.2.3.4.dcm")  # opening this for reading would block forever
    assert reconcile_spool(spool, ledger, collection="cxr") == 1
    assert ledger.get(sop_key(uid)).state == "received" and ledger.get(sop_key("1.2.3.4")) is None
    assert reconcile_spool(spool, ledger, collection="cxr") == 0  # idempotent


def test_the_receiver_refuses_to_start_without_an_allow_list(data_dir: Path, monkeypatch: pytest.MonkeyPatch):
    from typer.testing import CliRunner

    from cli.main import app

    monkeypatch.delenv("CXR_DICOM_ALLOW_AETS", raising=False)
    result = CliRunner().invoke(app, ["dicom-listen", "--port", "1", "--host", "127.0.0.1"])
    assert result.exit_code == 1
    assert "allow-list" in result.output and "--allow-aet" in result.output
