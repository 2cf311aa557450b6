"""The PACS pull (DICOMweb, from a real Orthanc) over every DICOM case of the hostile corpus: each is C-STOREd into
Orthanc byte for byte, pulled as stored (WADO-RS, transfer-syntax=*) into the spool and ledger by the same intake as
the receiver, then indexed by the queue's own jobs inline. Each bad instance fails alone at the decode stage with its
reason, the good films land, and the pull and the indexing stay under their memory ceiling. Non-DICOM cases do not
apply: a PACS holds DICOM instances only."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.config import Settings
from services.pacs.http import PacsAuth
from services.pacs.intake import Intake
from services.pacs.pull import pull
from services.pacs.pull_batch import PullOptions, PullReport
from services.pacs.spool import Spool
from services.pipeline.ledger import Item, Ledger, sop_key
from tests.hostile.conftest import INDEXING_CEILING_MB
from tests.hostile.corpus import Case, expected_outcomes, ledger_outcomes, write_corpus
from tests.hostile.memory import reset_peak, status_mb
from tests.pacs.conftest import SALT, index_inline, stored_payloads
from tests.pacs.dicom_factory import send_as_is
from tests.services import OrthancServer, free_port

SCU = "HOSTILE_SCU"
# A data set cut short is no instance a PACS can hold: Orthanc's DCMTK waits for the rest of it and drops the
# association ("DIMSE Failed to receive message"). It is never offered to a pull, so it is not sent.
NOT_HELD_BY_A_PACS = frozenset({"dicom_truncated"})


@dataclass(frozen=True)
class PullRun:
    cases: list[Case]
    pacs_statuses: dict[str, int]  # case id -> Orthanc's C-STORE status
    report: PullReport
    items: dict[str, Item | None]
    stored_uids: set[str]
    mb: tuple[float, float]  # this process: resting, peak over the pull and the indexing


@pytest.fixture(scope="module")
def pull_run(
    corpus: list[Case], tiny_checkpoint: Path, orthanc: OrthancServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PullRun]:
    root = tmp_path_factory.mktemp("hostile-pull")
    cases = [c for c in corpus if c.dicom and c.id not in NOT_HELD_BY_A_PACS]
    files = write_corpus(cases, root / "export")
    orthanc.clear()
    orthanc.add_modality("hostile", SCU, free_port())
    sent = send_as_is(list(files), "127.0.0.1", orthanc.dicom_port, called=orthanc.aet, calling=SCU)
    settings = Settings(
        data_dir=root / "data",
        patient_salt=SALT,
        model=tiny_checkpoint,
        spool_min_free_mb=0,
        store_linger_s=0.2,
        qdrant_url=None,
    )
    intake = Intake(
        Spool(settings.spool_path, min_free_mb=0), Ledger(settings.ledger_path), collection=settings.collection
    )
    resting = reset_peak(os.getpid())
    report = pull(intake, PullOptions(url=orthanc.dicomweb_url, auth=PacsAuth(*orthanc.auth)))
    index_inline(settings)
    peak = status_mb(os.getpid(), "VmHWM")
    ledger = Ledger(settings.ledger_path)
    items = {case.id: ledger.get(sop_key(case.sop_uid)) for case in cases}
    stored = {p["sop_uid"] for p in stored_payloads(settings)}
    yield PullRun(cases, {c.id: sent[p] for p, c in files.items()}, report, items, stored, (resting, peak))
    orthanc.clear()


def test_orthanc_holds_every_instance_and_the_pull_stores_each_one(pull_run: PullRun) -> None:
    assert pull_run.pacs_statuses == {c.id: 0 for c in pull_run.cases}
    report = pull_run.report
    assert report.complete and report.failed == [], report
    assert report.listed == report.stored == len(pull_run.cases)  # headers only: nothing is refused at the pull


def test_each_instance_is_indexed_or_fails_at_decode_with_its_reason(pull_run: PullRun) -> None:
    assert ledger_outcomes(pull_run.cases, pull_run.items) == expected_outcomes(pull_run.cases)


def test_the_good_films_of_the_pull_are_in_the_store(pull_run: PullRun) -> None:
    assert pull_run.stored_uids == {c.sop_uid for c in pull_run.cases if c.good}


def test_memory_stays_under_the_ceiling(pull_run: PullRun) -> None:
    resting, peak = pull_run.mb
    print(f"pull + indexing: resting {resting:.0f} MiB, peak {peak:.0f} MiB")
    assert peak <= resting + INDEXING_CEILING_MB
