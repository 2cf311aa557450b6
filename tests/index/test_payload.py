"""Payloads carry no PHI, prefer the curated manifest, and point ids are stable."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from services.errors import ConfigError
from services.index import PAYLOAD_FIELDS, build_payload, patient_hash, point_id
from services.manifest import ManifestRow

SALT = b"test-salt"
RAW_ID = "PX-99887766"
NAME = "DOE^JOHN"
SHA = hashlib.sha256(b"pixels").hexdigest()


@dataclass(frozen=True)
class HeaderMeta:
    """Stands in for services.imaging.ImageMeta, plus the PHI a DICOM header also holds."""

    format: str = "dicom"
    height: int = 2048
    width: int = 2048
    bits_stored: int | None = 12
    photometric: str | None = "MONOCHROME2"
    transfer_syntax: str | None = "1.2.840.10008.1.2.1"
    modality: str | None = "CR"
    body_part: str | None = "CHEST"
    view: str | None = "AP"
    sex: str | None = "M"
    age: str | int | None = "045Y"
    patient_id: str | None = RAW_ID
    study_uid: str | None = "1.2.3.4"
    series_uid: str | None = "1.2.3.4.5"
    sop_uid: str | None = "1.2.3.4.5.6"
    patient_name: str | None = NAME
    birth_date: str | None = "19700101"
    accession_number: str | None = "ACC-445566"
    institution_name: str | None = "St Elsewhere"


REF = "file:" + "ab" * 16


def _payload(**kwargs: object) -> dict[str, object]:
    base: dict[str, object] = {"label": "pneumonia", "source_ref": REF, "model_id": "vit-s", "salt": SALT}
    return build_payload(**{**base, **kwargs})  # type: ignore[arg-type]


def _assert_no_phi(payload: dict[str, object]) -> None:
    text = json.dumps(payload)
    for secret in (RAW_ID, "99887766", NAME, "DOE", "19700101", "ACC-445566", "St Elsewhere"):
        assert secret not in text
    assert set(payload) <= set(PAYLOAD_FIELDS)


def test_dicom_header_phi_leaves_no_trace() -> None:
    payload = _payload(meta=HeaderMeta(), content_sha256=SHA)
    _assert_no_phi(payload)
    assert payload["patient_hash"] == patient_hash(RAW_ID, SALT)
    assert payload["age"] == 45 and payload["view"] == "AP" and payload["modality"] == "CR"
    assert payload["sop_uid"] == "1.2.3.4.5.6" and payload["content_sha256"] == SHA


def test_real_image_meta_leaves_no_trace() -> None:
    from services.imaging import ImageMeta

    meta = ImageMeta(format="dicom", height=10, width=10, patient_id=RAW_ID, sex="F", age=50, sop_uid="9.9")
    payload = _payload(meta=meta)
    _assert_no_phi(payload)
    assert payload["patient_hash"] == patient_hash(RAW_ID, SALT) and payload["sex"] == "F"


def test_manifest_values_win_over_the_header() -> None:
    row = ManifestRow(
        path=Path("/data/a.dcm"),
        label="covid19",
        patient_id="P-1",
        view="PA",
        sex="F",
        age=40,
        source="github/ieee8023",
        origin_dataset="covid-chestxray",
    )
    payload = _payload(label=None, meta=HeaderMeta(), row=row)
    assert payload["label"] == "covid19"  # no explicit label: the manifest's
    assert (payload["view"], payload["sex"], payload["age"]) == ("PA", "F", 40)
    assert payload["patient_hash"] == patient_hash("P-1", SALT)
    assert payload["modality"] == "CR"  # only the header has it
    assert (payload["source"], payload["origin_dataset"]) == ("github/ieee8023", "covid-chestxray")
    _assert_no_phi(payload)
    assert "P-1" not in json.dumps(payload)
    assert _payload(label="override", row=row)["label"] == "override"


def test_none_values_are_dropped_and_indexed_at_is_utc() -> None:
    payload = _payload(label=None, model_id=None)
    assert set(payload) == {"source_ref", "indexed_at"}
    stamp = datetime.fromisoformat(str(payload["indexed_at"]))
    assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", ["file:///export/DOE^JOHN/x.dcm", "/export/DOE^JOHN/x.dcm", "spool:../x", "file:AB"])
def test_a_path_never_passes_as_source_ref(bad: str) -> None:
    with pytest.raises(ValueError, match="never a path"):
        _payload(source_ref=bad)


def test_spool_refs_and_no_ref_are_accepted() -> None:
    assert _payload(source_ref="spool:1.2.840.10008.5")["source_ref"] == "spool:1.2.840.10008.5"
    assert "source_ref" not in _payload(source_ref=None)


@pytest.mark.parametrize(("raw", "years"), [("045Y", 45), ("006M", 0), (71, 71), ("unknown", None), (True, None)])
def test_header_ages(raw: object, years: int | None) -> None:
    payload = _payload(meta=HeaderMeta(age=raw))  # type: ignore[arg-type]
    assert payload.get("age") == years


def test_patient_hash() -> None:
    h = patient_hash(RAW_ID, SALT)
    assert h is not None and len(h) == 32 and int(h, 16) >= 0
    assert h == patient_hash(f"  {RAW_ID} ", SALT)
    assert h != patient_hash(RAW_ID, b"other-salt")
    assert patient_hash(None, SALT) is None and patient_hash("  ", SALT) is None
    with pytest.raises(ConfigError):
        patient_hash(RAW_ID, b"")


def test_point_ids_are_deterministic() -> None:
    by_sop = point_id(sop_uid="1.2.3.4.5.6", content_sha256=SHA)
    assert by_sop == point_id(sop_uid="1.2.3.4.5.6", content_sha256=hashlib.sha256(b"re-encoded").hexdigest())
    assert by_sop == "c0381cff-f020-5fd7-b950-15720b554a69"  # golden: the namespace must never change
    by_content = point_id(sop_uid=None, content_sha256=SHA)
    assert by_content == point_id(sop_uid="", content_sha256=SHA.upper())
    assert by_content != by_sop
    assert uuid.UUID(by_content).version == 5
    with pytest.raises(ValueError, match="64 hex"):
        point_id(sop_uid=None, content_sha256="abc")
