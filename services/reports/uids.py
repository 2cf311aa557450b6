"""Deterministic UIDs of a report: the same query, collection, model and report version give the same Series and
SOP Instance UIDs, so a resend replaces the objects in the PACS and never duplicates them.

The PDF and the SR go in two series of their own: Modality is a series attribute (General Series module, Type 1),
and the PDF's is DOC while the SR's is SR, so one series cannot hold both."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

# Fixed forever: uuid5(NAMESPACE_DNS, "reports.cxr"). A UUID makes a UID as 2.25.<its integer> (PS3.5 B.2).
UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "reports.cxr")
# Bump when the report's content changes shape: a new version is a new series. 2: the PDF and the SR in two series.
REPORT_VERSION = "2"


@dataclass(frozen=True)
class ReportUids:
    pdf_series: str
    sr_series: str
    pdf: str
    sr: str
    study: str  # the query's StudyInstanceUID, or a derived one for a query with no DICOM context


def report_uids(
    query_key: str, *, collection: str, model_id: str, study_uid: str | None, version: str = REPORT_VERSION
) -> ReportUids:
    """`query_key` is the query's SOP Instance UID (a DICOM film) or `sha256:<hex>` of a PNG/JPEG's bytes. Each
    UID is a name-based UUID (version 5) of these values only, as 2.25.<integer>: no clock, no randomness.
    (pydicom's generate_uid(prefix=None) ignores its entropy sources and is random.)"""
    parts = ["cxr-report", version, query_key, collection, model_id]

    def uid(role: str) -> str:
        return f"2.25.{uuid.uuid5(UID_NAMESPACE, '|'.join([*parts, role])).int}"

    return ReportUids(
        pdf_series=uid("pdf-series"),
        sr_series=uid("sr-series"),
        pdf=uid("pdf"),
        sr=uid("sr"),
        study=study_uid or uid("study"),
    )
