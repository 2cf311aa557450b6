"""The similar-cases report on the real indexed store: the page as poppler renders it, the SR as highdicom reads
it, no other patient anywhere in either DICOM object, and UIDs that a rebuild reproduces."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from scipy import ndimage

from services.errors import ReportError
from services.pipeline import Runtime
from services.reports.build import Report, require_query_study
from services.reports.dicom_pdf import to_bytes
from tests.api.conftest import Indexed
from tests.reports.conftest import QUERY_PATIENT_ID, K, make_report
from tests.screenshots import screenshot_path
from tests.services import require

SNOMED = {
    "covid19": "840539006",
    "normal": "17621005",
    "pneumonia_bacterial": "53084003",
    "pneumonia_viral": "75570004",
}


def render_page(pdf: bytes, tmp_path: Path, dpi: int) -> Image.Image:
    """The PDF's only page as poppler draws it (grey)."""
    pdftoppm = require("pdftoppm", "poppler-utils")
    (tmp_path / "r.pdf").write_bytes(pdf)
    subprocess.run(
        [pdftoppm, "-r", str(dpi), "-gray", "-png", "-singlefile", tmp_path / "r.pdf", tmp_path / "page"],
        check=True,
        timeout=60,
    )
    return Image.open(tmp_path / "page.png").convert("L")


def picture_regions(page: Image.Image, dpi: int) -> list[tuple[slice, slice]]:
    """Bounding boxes of the drawn films: connected non-white regions at least half an inch on each side (a
    glyph of the largest type on the page is under a third of an inch)."""
    ink = np.asarray(page) < 245
    labels, _ = ndimage.label(ink)
    boxes = ndimage.find_objects(labels)
    side = dpi // 2
    return [b for b in boxes if b[0].stop - b[0].start >= side and b[1].stop - b[1].start >= side]


def pdf_text(pdf: bytes, tmp_path: Path) -> str:
    pdftotext = require("pdftotext", "poppler-utils")
    (tmp_path / "t.pdf").write_bytes(pdf)
    return subprocess.run(
        [pdftotext, "-layout", tmp_path / "t.pdf", "-"], capture_output=True, text=True, check=True, timeout=60
    ).stdout


def test_the_page_shows_the_query_and_k_result_films(report: Report, tmp_path: Path) -> None:
    assert report.pdf.startswith(b"%PDF") and len(report.hit_ids) == K
    page = render_page(report.pdf, tmp_path, dpi=60)
    assert page.width > page.height  # landscape, for a reading-room monitor
    assert len(picture_regions(page, 60)) == K + 1  # the query and k similar films
    text = pdf_text(report.pdf, tmp_path)
    assert "decision support, not a diagnosis" in text.lower()
    assert "neighbours' labels" in text.lower() and "not evaluated" in text  # the tiny checkpoint has no evaluation
    # The README's picture of a report page, small enough to commit.
    big = render_page(report.pdf, tmp_path, dpi=80)
    image = screenshot_path("report-page.png")
    big.save(image, optimize=True)
    assert image.stat().st_size < 300_000


def _cases(sr: hd.sr.ComprehensiveSR) -> list[dict[str, object]]:
    """Each "Similar case" container of the SR as {concept code value: content item value}."""
    cases = []
    for item in sr.ContentSequence:
        if item.name.value == "SIMCASE":
            cases.append({child.name.value: child.value for child in item.ContentSequence})
    return cases


def test_the_sr_reads_back_with_k_results_that_are_indexed_points(
    report: Report, indexed: Indexed, tmp_path: Path
) -> None:
    path = tmp_path / "sr.dcm"
    path.write_bytes(to_bytes(report.sr_dataset))
    sr = hd.sr.srread(path)
    assert isinstance(sr, hd.sr.ComprehensiveSR)
    cases = _cases(sr)
    assert [c["RANK"] for c in cases] == list(range(1, K + 1))
    ids = [str(c["RESULTID"]) for c in cases]
    assert ids == list(report.hit_ids)
    with Runtime(indexed.settings, model_path=indexed.model) as rt:
        records = {r.id: r.payload for r in rt.store.retrieve(indexed.settings.collection, ids)}
    assert set(records) == set(ids)
    for case in cases:
        label = records[str(case["RESULTID"])].get("label")
        code = case["CASELABEL"]
        if label in SNOMED:
            assert (code.value, code.scheme_designator) == (SNOMED[label], "SCT")
        else:
            assert (code.value, code.scheme_designator) == (label, "99CXR")
    schemes = [item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence]
    assert schemes.count("99CXR") == 1
    query_refs = [i for i in sr.ContentSequence if i.name.value == "QUERYIMAGE"]
    assert query_refs[0].referenced_sop_instance_uid == report.query_sop_uid


def _values(ds: pydicom.Dataset) -> list[str]:
    """The text of every element of `ds`, its file meta, sequences and private tags included."""
    out = [str(e.value) for e in ds.file_meta.iterall()]
    for elem in ds.iterall():
        if elem.VR == "SQ":
            continue
        value = elem.value
        out.append(value.decode("latin-1") if isinstance(value, bytes) else str(value))
    return out


def test_no_other_patient_appears_in_either_dicom_object(
    report: Report, indexed: Indexed, query_film: Path, tmp_path: Path
) -> None:
    with Runtime(indexed.settings, model_path=indexed.model) as rt:
        payloads = [r.payload for r in rt.store.retrieve(indexed.settings.collection, list(report.hit_ids))]
    others: set[str] = set()
    for p in payloads:
        others |= {
            str(p[key])
            for key in ("study_uid", "series_uid", "sop_uid", "patient_hash", "source_ref", "content_sha256")
            if p.get(key)
        }
    hit_sops = {p.get("sop_uid") for p in payloads}
    films = [pydicom.dcmread(f, stop_before_pixels=True) for f in indexed.dicom]
    assert hit_sops & {f.SOPInstanceUID for f in films}, "a DICOM film of another patient should be among the hits"
    for film in films:  # the other patient's own identifiers, from the indexed files
        others |= {str(film.PatientID), str(film.PatientName), str(film.StudyInstanceUID)}
        others |= {str(film.SeriesInstanceUID), str(film.SOPInstanceUID), str(film.AccessionNumber)}
    others |= {row["patient_id"] for row in indexed.rows if row.get("patient_id")}  # every other indexed patient
    others.discard("")
    query = pydicom.dcmread(query_film, stop_before_pixels=True)
    for ds in (report.pdf_dataset, report.sr_dataset):
        values = _values(ds)
        raw = to_bytes(ds).decode("latin-1")
        leaked = sorted(o for o in others if any(o in v for v in values) or o in raw)
        assert not leaked, f"{ds.SOPClassUID}: another patient's identifiers {leaked}"
        assert ds.PatientID == QUERY_PATIENT_ID and ds.StudyInstanceUID == query.StudyInstanceUID
        assert ds.SeriesDescription == "cxr similar cases" and ds.SeriesInstanceUID != query.SeriesInstanceUID
    page = pdf_text(report.pdf, tmp_path)
    assert not [o for o in others if o in page]
    # two series, one modality each (Modality is a series attribute)
    assert report.pdf_dataset.SeriesInstanceUID != report.sr_dataset.SeriesInstanceUID
    assert (report.pdf_dataset.Modality, report.sr_dataset.Modality) == ("DOC", "SR")


def test_a_rebuild_gives_the_same_uids(report: Report, indexed: Indexed, query_film: Path) -> None:
    again = make_report(indexed, query_film)
    for first, second in ((report.pdf_dataset, again.pdf_dataset), (report.sr_dataset, again.sr_dataset)):
        assert first.SOPInstanceUID == second.SOPInstanceUID
        assert first.SeriesInstanceUID == second.SeriesInstanceUID
        assert first.StudyInstanceUID == second.StudyInstanceUID
    assert report.pdf_dataset.SOPInstanceUID != report.sr_dataset.SOPInstanceUID
    assert again.hit_ids == report.hit_ids


def test_an_indexed_point_and_a_png_query(report: Report, indexed: Indexed, tmp_path: Path) -> None:
    """By id: the point's own film, its patient excluded. A PNG: the page, and DICOM objects in a new patient-less
    study that are refused for sending."""
    row = indexed.rows[0]
    with Runtime(indexed.settings, model_path=indexed.model) as rt:
        by_id = {r.payload.get("content_sha256"): r for r in rt.store.scroll(indexed.settings.collection)}
    import hashlib

    sha = hashlib.sha256((indexed.sample / row["path"]).read_bytes()).hexdigest()
    point = by_id[sha]
    built = make_report(indexed, point.id, k=5)
    with Runtime(indexed.settings, model_path=indexed.model) as rt:
        hits = rt.store.retrieve(indexed.settings.collection, list(built.hit_ids))
    assert point.id not in built.hit_ids and len(built.hit_ids) == 5
    assert point.payload["patient_hash"] not in {h.payload.get("patient_hash") for h in hits}
    png = tmp_path / "q.png"
    Image.open(indexed.sample / row["path"]).convert("L").save(png)
    loose = make_report(indexed, png, k=3)
    assert loose.query_sop_uid is None and loose.pdf.startswith(b"%PDF")
    assert loose.pdf_dataset.StudyInstanceUID == loose.sr_dataset.StudyInstanceUID
    for ds in (loose.pdf_dataset, loose.sr_dataset):  # Type 2: present, empty
        assert "PatientID" in ds and not ds.PatientID and not ds.PatientName
    with pytest.raises(ReportError, match="not a DICOM film"):
        require_query_study(loose)
    with pytest.raises(ReportError, match="not the id of an indexed image"):
        make_report(indexed, tmp_path / "no-such-film.dcm")


def test_a_film_with_burned_in_annotation_is_never_drawn(indexed: Indexed, dicom_dir: Path, tmp_path: Path) -> None:
    from services.pipeline.ledger import Ledger
    from services.reports.content import stored_picture

    marked = tmp_path / "burned.dcm"
    ds = pydicom.dcmread(dicom_dir / "RG1_UNCI.dcm")
    ds.BurnedInAnnotation = "YES"
    ds.save_as(marked)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        drawn = stored_picture(
            "p", {"source_uri": (dicom_dir / "RG1_UNCI.dcm").as_uri()}, settings=indexed.settings, ledger=ledger
        )
        hidden = stored_picture("p", {"source_uri": marked.as_uri()}, settings=indexed.settings, ledger=ledger)
    finally:
        ledger.close()
    assert drawn.png is not None and Image.open(io.BytesIO(drawn.png)).size[0] > 0
    assert hidden.png is None and hidden.not_drawn == "burned-in annotation"


def test_a_point_query_starts_from_its_stored_vector(indexed: Indexed) -> None:
    """A report by point id (what delivery asks for) searches with the point's stored vector, not a new encoding
    of its film: the same hits, at the same scores, as encoding the film again as ingest does (a JPEG 2000 film
    decoded at the model's size, where a full decode moves scores by up to about 1e-3)."""
    from services.pipeline.query import QueryOptions, read_query, search_decoded
    from services.reports.content import stored_vector
    from services.reports.query_film import resolve_query

    settings = indexed.settings
    with Runtime(settings, model_path=indexed.model) as rt:
        pid = next(r.id for r in rt.store.scroll(settings.collection) if r.payload.get("label") == "dicom-cr")
        film = resolve_query(pid, settings=settings, store=rt.store, ledger=rt.ledger)
        vector = stored_vector(film, rt.encoder.model_id)
        assert vector is not None and film.vector_model == rt.encoder.model_id
        opts = QueryOptions(collection=settings.collection, k=5, max_pixels=settings.max_pixels)
        decoded, sha = read_query(film.path, opts, target_side=rt.encoder.image_size)
        fresh = search_decoded(decoded, sha, encoder=rt.encoder, store=rt.store, opts=opts, salt=settings.salt)
        kept = search_decoded(
            decoded, sha, encoder=rt.encoder, store=rt.store, opts=opts, salt=settings.salt, vector=vector
        )
    assert [h.id for h in kept.hits] == [h.id for h in fresh.hits] and len(kept.hits) == 5
    np.testing.assert_allclose([h.score for h in kept.hits], [h.score for h in fresh.hits], atol=1e-5)
