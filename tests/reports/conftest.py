"""Report fixtures: the API tests' indexed store (real cxr-public images and two real chest CRs, tiny model), and a
query film of a new patient made from a third real CR, so the indexed CRs are another patient's films."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from services.pipeline import Runtime
from services.reports.build import Report, build_report
from tests.indexed_store import QUERY_DICOM, Indexed

K = 10
QUERY_PATIENT_ID = "REPORT-QUERY-0001"
QUERY_PATIENT_NAME = "Query^Reportpatient"


@pytest.fixture(scope="session")
def query_film(dicom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RG1_UNCR (not indexed) as a film of a patient of its own, in a study of its own."""
    out = tmp_path_factory.mktemp("report-query") / "q.dcm"
    shutil.copy(dicom_dir / QUERY_DICOM, out)
    ds = pydicom.dcmread(out)
    ds.PatientID, ds.PatientName = QUERY_PATIENT_ID, QUERY_PATIENT_NAME
    ds.AccessionNumber, ds.StudyID = "REPQACC01", "REPQSTUDY1"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["report-test-study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["report-test-series"])
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["report-test-sop"])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(out)
    return out


def make_report(indexed: Indexed, query: Path | str, k: int = K) -> Report:
    with Runtime(indexed.settings, model_path=indexed.model) as rt:
        return build_report(query, settings=indexed.settings, searcher=rt, k=k)


@pytest.fixture(scope="session")
def report(indexed: Indexed, query_film: Path) -> Report:  # noqa: F811
    """The report of `query_film`, built once."""
    return make_report(indexed, query_film)


from tests.api.browser import live, page  # noqa: E402, F401 - the browser fixtures, for the viewer's Report button
