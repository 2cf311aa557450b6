"""The report in coded form: a Comprehensive SR built with highdicom, for software to read (IHE AI Results).

Per similar film: its rank, score, label (SNOMED CT where a code exists, else one private coding scheme declared
once in the instance), its opaque result id (the point UUID) and what the page says of it. Never another patient's
UIDs or identifiers. The SR references the query image (same patient), and names the model and the collection.
"""

from __future__ import annotations

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import (
    CodeContentItem,
    CodedConcept,
    ComprehensiveSR,
    ContainerContentItem,
    ImageContentItem,
    NumContentItem,
    TextContentItem,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from services.reports.content import STATEMENT, ReportContent, ResultCase
from services.reports.dicom_pdf import MANUFACTURER, SERIES_DESCRIPTION, SR_SERIES_NUMBER, query_evidence
from services.reports.uids import ReportUids

SCHEME = "99CXR"  # the private coding scheme: declared once, in CodingSchemeIdentificationSequence
SNOMED_LABELS = {
    "covid19": CodedConcept("840539006", "SCT", "COVID-19"),
    "normal": CodedConcept("17621005", "SCT", "Normal"),
    "pneumonia_bacterial": CodedConcept("53084003", "SCT", "Bacterial pneumonia"),
    "pneumonia_viral": CodedConcept("75570004", "SCT", "Viral pneumonia"),
}
REPORT_TITLE = CodedConcept("SIMCASES", SCHEME, "Similar cases report")
SIMILAR_CASE = CodedConcept("SIMCASE", SCHEME, "Similar case")
RANK = CodedConcept("RANK", SCHEME, "Rank")
SCORE = CodedConcept("SIMSCORE", SCHEME, "Similarity score")
BAND = CodedConcept("SIMBAND", SCHEME, "Similarity band")
CASE_LABEL = CodedConcept("CASELABEL", SCHEME, "Label of the similar film")
RESULT_ID = CodedConcept("RESULTID", SCHEME, "Result id")
AGE_BAND = CodedConcept("AGEBAND", SCHEME, "Age band")
VIEW = CodedConcept("VIEW", SCHEME, "View")
SOURCE = CodedConcept("SOURCE", SCHEME, "Source data set")
COLLECTION = CodedConcept("COLLECTION", SCHEME, "Collection")
EVALUATION = CodedConcept("EVALUATION", SCHEME, "Model evaluation")
QUERY_IMAGE = CodedConcept("QUERYIMAGE", SCHEME, "Query image")
STATEMENT_CODE = CodedConcept("STATEMENT", SCHEME, "Statement")
UNITLESS = CodedConcept("1", "UCUM", "no units")


def label_code(label: str | None) -> CodedConcept:
    """SNOMED CT for the four labels that have a code; the private scheme for every other label."""
    text = label or "unlabelled"
    return SNOMED_LABELS.get(text) or CodedConcept(text[:64], SCHEME, text[:64])


def similar_cases_sr(content: ReportContent, uids: ReportUids, *, pdf_dataset: Dataset) -> Dataset:
    """The Comprehensive SR of `content`. Evidence is the query film; a query with no DICOM context (PNG, JPEG)
    cites the report's own Encapsulated PDF instead, whose new patient-less study it then shares."""
    header = content.query.header
    evidence = [query_evidence(header)] if header is not None else [pdf_dataset]
    items: list = [
        TextContentItem(codes.DCM.AlgorithmName, "cxr similar-case retrieval", relationship_type="HAS OBS CONTEXT"),
        TextContentItem(codes.DCM.AlgorithmVersion, content.model_id, relationship_type="HAS OBS CONTEXT"),
        TextContentItem(COLLECTION, content.collection, relationship_type="HAS OBS CONTEXT"),
        TextContentItem(EVALUATION, content.evaluation, relationship_type="HAS OBS CONTEXT"),
    ]
    if header is not None:
        items.append(
            ImageContentItem(QUERY_IMAGE, header.SOPClassUID, header.SOPInstanceUID, relationship_type="CONTAINS")
        )
    items += [_case(case) for case in content.results]
    items.append(TextContentItem(STATEMENT_CODE, STATEMENT, relationship_type="CONTAINS"))
    root = ContainerContentItem(REPORT_TITLE)
    root.ContentSequence = items
    return ComprehensiveSR(
        evidence=evidence,
        content=root,
        series_instance_uid=uids.sr_series,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.sr,
        instance_number=2,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=SERIES_DESCRIPTION,
        software_versions=content.model_id[:64],
        content_date=content.created.date(),
        content_time=content.created.time(),
        coding_schemes=[
            CodingSchemeIdentificationItem(
                SCHEME, name="cxr similar-cases report codes", responsible_organization="cxr"
            )
        ],
    )


def _case(case: ResultCase) -> ContainerContentItem:
    container = ContainerContentItem(SIMILAR_CASE, relationship_type="CONTAINS")
    children: list = [
        NumContentItem(RANK, case.rank, UNITLESS, relationship_type="CONTAINS"),
        NumContentItem(SCORE, round(case.score, 6), UNITLESS, relationship_type="CONTAINS"),
        CodeContentItem(CASE_LABEL, label_code(case.label), relationship_type="CONTAINS"),
        TextContentItem(RESULT_ID, case.id, relationship_type="CONTAINS"),
    ]
    for concept, value in ((BAND, case.band), (AGE_BAND, case.age_band), (VIEW, case.view), (SOURCE, case.source)):
        if value:
            children.append(TextContentItem(concept, value, relationship_type="CONTAINS"))
    container.ContentSequence = children
    return container
