"""The report's PDF as a DICOM Encapsulated PDF instance, in a new series of the query's own study.

Its Patient and Study modules are copied from the query film (it is that patient's study); nothing of any other
patient is written. A query with no DICOM context (PNG, JPEG) gets a new, patient-less study.
"""

from __future__ import annotations

from copy import deepcopy

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import EncapsulatedPDFStorage, ExplicitVRLittleEndian

from services.reports.content import ReportContent
from services.reports.uids import ReportUids

SERIES_DESCRIPTION = "cxr similar cases"
SERIES_NUMBER = 9701  # high numbers, out of the way of the modality's series: the PDF's, then the SR's
SR_SERIES_NUMBER = 9702
MANUFACTURER = "cxr"
# Type 2 attributes highdicom reads from the film the objects are filed under; absent ones are written empty.
_TYPE2 = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def query_evidence(header: Dataset) -> Dataset:
    """A copy of the query's header with every Type 2 Patient/Study attribute present (empty when the film has
    none), as highdicom expects of the film a new instance is filed under."""
    ds = deepcopy(header)
    for keyword in _TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def encapsulated_pdf(pdf: bytes, content: ReportContent, uids: ReportUids) -> Dataset:
    """The Encapsulated PDF Storage instance holding `pdf`."""
    header = content.query.header
    ds = hd.SOPClass(
        study_instance_uid=uids.study,
        series_instance_uid=uids.pdf_series,
        series_number=SERIES_NUMBER,
        sop_instance_uid=uids.pdf,
        sop_class_uid=EncapsulatedPDFStorage,
        instance_number=1,
        modality="DOC",
        manufacturer=MANUFACTURER,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=SERIES_DESCRIPTION,
        software_versions=content.model_id[:64],
        content_date=content.created.date(),
        content_time=content.created.time(),
        study_date=None if header is not None else content.created.date(),
        study_time=None if header is not None else content.created.time(),
    )
    if header is not None:
        ds.copy_patient_and_study_information(query_evidence(header))
        source = Dataset()
        source.ReferencedSOPClassUID = header.SOPClassUID
        source.ReferencedSOPInstanceUID = header.SOPInstanceUID
        ds.SourceInstanceSequence = [source]
    ds.ConversionType = "SYN"  # made by software, not scanned
    ds.BurnedInAnnotation = "NO"  # the page names no patient, and never draws a film with burned-in text
    ds.DocumentTitle = "cxr similar cases (decision support, not a diagnosis)"
    ds.ConceptNameCodeSequence = []
    ds.AcquisitionDateTime = ""
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")  # OB is even-length
    return ds


def to_bytes(ds: Dataset) -> bytes:
    """A Part 10 file of `ds` (preamble, file meta and all)."""
    from io import BytesIO

    buf = BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()
