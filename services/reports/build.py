"""Build the similar-cases report for one query: the search, then the PDF page and its two DICOM objects.

The one entry point the CLI (`cxr report`), the API (`POST /v1/report`) and the delivery task call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom

from services.config import Settings
from services.errors import ReportError

if TYPE_CHECKING:
    from services.pipeline.runtime import RuntimeLike


@dataclass(frozen=True)
class Report:
    pdf: bytes  # the one-page PDF
    pdf_dataset: pydicom.Dataset  # Encapsulated PDF instance (new series in the query's study)
    sr_dataset: pydicom.Dataset  # Comprehensive SR instance (a series of its own, in the same study)
    hit_ids: tuple[str, ...]  # the point ids reported, rank order
    query_sop_uid: str | None


def build_report(query: Path | str, *, settings: Settings, searcher: RuntimeLike, k: int = 10) -> Report:
    """`query` is an image file (DICOM, PNG, JPEG) or the id of an indexed point of `settings.collection`.

    The k most similar films of other patients, one per patient. A PNG or JPEG query has no DICOM context: its
    DICOM objects are filed under a new patient-less study (fine for `--dicom` files, refused for sending:
    `require_query_study`)."""
    from services.reports.content import gather_content
    from services.reports.dicom_pdf import encapsulated_pdf
    from services.reports.pdf import MAX_RESULTS, render_pdf
    from services.reports.query_film import resolve_query
    from services.reports.sr import similar_cases_sr
    from services.reports.uids import report_uids

    if not 1 <= k <= MAX_RESULTS:
        raise ReportError(f"a report shows 1 to {MAX_RESULTS} similar films, not {k}", "Pass --k 10 (the default).")
    store, ledger = searcher.store, searcher.ledger
    film = resolve_query(query, settings=settings, store=store, ledger=ledger)
    content = gather_content(
        film,
        settings=settings,
        encoder=searcher.encoder,
        store=store,
        ledger=ledger,
        k=k,
        model_path=getattr(searcher, "model_path", None),
    )
    pdf = render_pdf(content)
    study = None if film.header is None else str(film.header.get("StudyInstanceUID", "")).strip() or None
    uids = report_uids(
        film.sop_uid or f"sha256:{content.query_sha256}",
        collection=settings.collection,
        model_id=content.model_id,
        study_uid=study,
    )
    try:
        pdf_dataset = encapsulated_pdf(pdf, content, uids)
        sr_dataset = similar_cases_sr(content, uids, pdf_dataset=pdf_dataset)
    except (KeyError, AttributeError, ValueError) as exc:  # highdicom's refusal of the film's header
        raise ReportError(
            f"the query film's DICOM header cannot carry a report ({type(exc).__name__}: {exc})",
            "Check the film's SOP Class, SOP Instance and Study UIDs: a film a PACS sends has all three.",
        ) from exc
    return Report(
        pdf=pdf,
        pdf_dataset=pdf_dataset,
        sr_dataset=sr_dataset,
        hit_ids=tuple(r.id for r in content.results),
        query_sop_uid=film.sop_uid,
    )


def require_query_study(report: Report) -> None:
    """ReportError unless the report belongs in a study the PACS knows: a PNG or JPEG query has none."""
    if report.query_sop_uid is None:
        raise ReportError(
            "this report's query is not a DICOM film, so it has no study in the PACS to go back to",
            "Send reports for DICOM films only; keep this one as a PDF (--out) or DICOM files (--dicom).",
        )
