"""Ages of 90 and over are one band (HIPAA Safe Harbor) wherever an age is kept, filtered or shown: a real DICOM
(PatientAge 097Y) and a real manifest (age 95) through the decoder, the payload builder and the embedded store's
age filter, the API's payload and the de-identified copy."""

from __future__ import annotations

import csv
import uuid
from pathlib import Path

import numpy as np
import pydicom
import pytest

from services.ages import AGE_BAND, age_band, age_filter_values, age_years, dicom_age, public_age_fields
from services.imaging import decode_image
from services.index import PointRecord, QdrantEdgeStore, build_payload
from services.manifest import read_manifest
from services.pacs.deid import Deidentifier
from services.pipeline.filters import parse_filters
from services.pipeline.query import hits_to_json
from tests.pacs.dicom_factory import dx_from_jpeg, public_jpegs, save

SALT = b"age-test-salt"
REF = "file:" + "cd" * 16


@pytest.mark.parametrize(
    ("raw", "years"),
    [
        ("045Y", 45),
        ("089Y", 89),
        ("090Y", 90),
        ("097Y", 90),
        ("120Y", 90),
        ("999Y", None),
        ("030M", 2),
        ("006M", 0),
        (95, 90),
        (89, 89),
        (95.7, 90),
        (-1, None),
        (131, None),
        ("abc", None),
        (None, None),
        (True, None),
        (float("nan"), None),
    ],
)
def test_age_years_top_codes(raw: object, years: int | None) -> None:
    assert age_years(raw) == years


def test_band_display_dicom_value_and_filter_values() -> None:
    assert (age_band(45), age_band(90), age_band(104), age_band(None)) == ("45", AGE_BAND, AGE_BAND, None)
    assert dicom_age("097Y") == "090Y" and dicom_age("045Y") == "045Y" and dicom_age("006M") == "006M"
    assert dicom_age("abc") is None
    band = age_filter_values([95])
    assert band[0] == 90 and 97 in band and 130 in band and 89 not in band
    assert age_filter_values([88, 89, 90, 91]) == (88, 89, *range(90, 131))
    flt = parse_filters(["age=90+"])
    assert flt is not None and flt.must["age"] == tuple(range(90, 131))


def _dicom_97(cxr_public: Path, out: Path) -> Path:
    ds = dx_from_jpeg(public_jpegs(cxr_public, 1)[0], 0, seed="cxr-test-age")
    ds.PatientAge = "097Y"
    return save(ds, out)


def test_a_dicom_of_97_and_a_manifest_row_of_95_are_stored_in_the_band(cxr_public: Path, tmp_path: Path) -> None:
    dcm = _dicom_97(cxr_public, tmp_path / "dicom")
    meta = decode_image(dcm).meta
    assert meta.age == 90  # the header parser top-codes already
    from_dicom = build_payload(label="x", source_ref=REF, model_id="m", salt=SALT, meta=meta)
    assert (from_dicom["age"], from_dicom["age_band"]) == (90, AGE_BAND)

    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerows([["path", "label", "patient_id", "age"], ["a.png", "normal", "P1", "95"]])
        writer.writerow(["b.png", "normal", "P2", "89"])
    old, young = read_manifest(manifest)
    assert (old.age, young.age) == (90, 89)
    from_row = build_payload(label=None, source_ref=REF, model_id="m", salt=SALT, row=old)
    assert (from_row["age"], from_row["age_band"]) == (90, AGE_BAND)
    assert "age_band" not in build_payload(label=None, source_ref=REF, model_id="m", salt=SALT, row=young)
    # Even an exact age handed straight to the builder (a caller that skipped the parsers) is top-coded.
    from dataclasses import replace

    assert build_payload(label=None, source_ref=REF, model_id="m", salt=SALT, row=replace(old, age=97))["age"] == 90


def test_the_age_filter_finds_the_band_and_older_exact_points(tmp_path: Path) -> None:
    store = QdrantEdgeStore(tmp_path / "qdrant")
    try:
        store.create_collection("c", 4)
        rng = np.random.default_rng(0)
        points = []
        for age in (45, 89, 90, 97):  # 97: a point indexed before ages were top-coded
            payload = {"label": "x", "age": age, **({"age_band": AGE_BAND} if age == 90 else {})}
            points.append(PointRecord(str(uuid.uuid4()), rng.normal(size=4).astype(np.float32), payload))
        store.upsert("c", points)
        query = np.ones(4, dtype=np.float32)

        def ages(*expr: str) -> list[int]:
            return sorted(h.payload["age"] for h in store.search("c", query, 10, parse_filters(list(expr))))

        assert ages("age=95") == [90, 97]  # any age from 90 means the band
        assert ages("age=90+") == [90, 97]
        assert ages("age=" + ",".join(map(str, range(80, 121)))) == [89, 90, 97]  # the viewer's 80-120 range
        assert ages("age=89") == [89]
        assert ages("age!=90") == [45, 89]
        hits = store.search("c", query, 10, parse_filters(["age=90+"]))
    finally:
        store.close()
    shown = [h["payload"] for h in hits_to_json(hits)]  # what `cxr search --json` and the API show
    assert [(p["age"], p["age_band"]) for p in shown] == [(90, AGE_BAND), (90, AGE_BAND)]


def test_public_payloads_show_the_band() -> None:
    from services.api.schemas import public_payload

    assert public_payload({"age": 97, "label": "x"}) == {"age": 90, "age_band": AGE_BAND, "label": "x"}
    assert public_payload({"age": 45}) == {"age": 45}
    assert public_payload({"age": 999}) == {}
    assert public_age_fields({"label": "x"}) == {"label": "x"}


def test_a_deidentified_copy_keeps_only_the_band(cxr_public: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(_dicom_97(cxr_public, tmp_path))
    Deidentifier(SALT).apply(ds)
    assert ds.PatientAge == "090Y"
    out = tmp_path / "deid.dcm"
    ds.save_as(out, enforce_file_format=True)
    assert decode_image(out).meta.age == 90 and b"097Y" not in out.read_bytes()
