"""The DICOM receiver (`cxr dicom-listen`, a real pynetdicom sender) over every DICOM case of the hostile corpus in
one association, sent byte for byte. The receiver checks headers only: each instance it can parse is a chest
radiograph by the acceptance rule, so it is stored and answered Success, and its decode fails later, alone, at the
decode stage with its reason (indexing runs the queue's own jobs inline). The good films land; the receiver and the
indexing stay under their memory ceilings. Non-DICOM cases do not apply: C-STORE carries DICOM data sets only."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.config import Settings
from services.pacs.acceptance import SUCCESS
from services.pipeline.ledger import Item, Ledger, sop_key
from tests.hostile.conftest import INDEXING_CEILING_MB
from tests.hostile.corpus import Case, expected_outcomes, ledger_outcomes, write_corpus
from tests.hostile.memory import reset_peak, status_mb
from tests.pacs.conftest import SALT, ReceiverProcess, index_inline, pacs_env, stored_payloads
from tests.pacs.dicom_factory import send_as_is

# The receiver never decodes pixels and holds one instance at a time (at most CXR_DICOM_MAX_INSTANCE_MB, 128 MiB by
# default); it rests near 100 MiB here. The largest instance of the corpus is the RG1 film (7 MiB).
RECEIVER_CEILING_MB = 256


@dataclass(frozen=True)
class ReceiverRun:
    cases: list[Case]
    statuses: dict[str, int]  # case id -> C-STORE status
    items: dict[str, Item | None]  # case id -> its ledger item after indexing
    stored_uids: set[str]
    receiver_peak_mb: float
    indexing_mb: tuple[float, float]  # resting, peak


@pytest.fixture(scope="module")
def receiver_run(corpus: list[Case], tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> ReceiverRun:
    root = tmp_path_factory.mktemp("hostile-receiver")
    cases = [c for c in corpus if c.dicom]
    files = write_corpus(cases, root / "export")
    data_dir = root / "data"
    receiver = ReceiverProcess(pacs_env(data_dir, tiny_checkpoint), root, allow=("MODALITY",)).start()
    try:
        sent = send_as_is(list(files), "127.0.0.1", receiver.port, called="CXR", calling="MODALITY")
        receiver_peak = status_mb(receiver.proc.pid, "VmHWM")
    finally:
        receiver.stop()
    settings = Settings(
        data_dir=data_dir,
        patient_salt=SALT,
        model=tiny_checkpoint,
        spool_min_free_mb=0,
        store_linger_s=0.2,
        qdrant_url=None,
    )
    resting = reset_peak(os.getpid())
    index_inline(settings)
    peak = status_mb(os.getpid(), "VmHWM")
    ledger = Ledger(settings.ledger_path)
    items = {case.id: ledger.get(sop_key(case.sop_uid)) for case in cases}
    stored = {p["sop_uid"] for p in stored_payloads(settings)}
    statuses = {case.id: sent[path] for path, case in files.items()}
    return ReceiverRun(cases, statuses, items, stored, receiver_peak, (resting, peak))


def test_every_parsable_chest_instance_is_stored_and_answered_success(receiver_run: ReceiverRun) -> None:
    assert receiver_run.statuses == {c.id: SUCCESS for c in receiver_run.cases}


def test_each_instance_is_indexed_or_fails_at_decode_with_its_reason(receiver_run: ReceiverRun) -> None:
    assert ledger_outcomes(receiver_run.cases, receiver_run.items) == expected_outcomes(receiver_run.cases)


def test_the_good_films_of_the_association_are_in_the_store(receiver_run: ReceiverRun) -> None:
    assert receiver_run.stored_uids == {c.sop_uid for c in receiver_run.cases if c.good}


def test_memory_stays_under_the_ceilings(receiver_run: ReceiverRun) -> None:
    resting, peak = receiver_run.indexing_mb
    print(f"receiver: peak {receiver_run.receiver_peak_mb:.0f} MiB; indexing: resting {resting:.0f}, peak {peak:.0f}")
    assert receiver_run.receiver_peak_mb <= RECEIVER_CEILING_MB
    assert peak <= resting + INDEXING_CEILING_MB
