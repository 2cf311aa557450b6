"""The file index (`cxr index FOLDER`, inline) over the whole hostile corpus in one batch: each bad file fails alone
at the decode stage with its reason, every good film lands in the store, and the bombs cost no memory."""

from __future__ import annotations

import json
from pathlib import Path

from services.index import open_store
from services.pipeline.refs import file_ref
from tests.hostile.conftest import INDEXING_CEILING_MB, FileIndexRun


def test_each_file_lands_or_fails_at_decode_with_its_reason(file_index_run: FileIndexRun) -> None:
    run = file_index_run
    failed = {Path(f.path): f for f in run.report.failed}
    got, want = {}, {}
    for path, case in run.files.items():
        want[case.id] = "ok" if case.good else ("decode", case.says)
        f = failed.get(path)
        got[case.id] = "ok" if f is None else (f.stage, case.says if case.says and case.says in f.reason else f.reason)
    assert got == want
    assert run.report.indexed == sum(c.good for c in run.files.values())
    assert run.report.skipped == 0


def test_the_good_films_of_the_batch_are_in_the_store(file_index_run: FileIndexRun) -> None:
    run = file_index_run
    settings = run.settings
    store = open_store(settings)
    try:
        payloads = [p.payload for p in store.scroll(settings.collection)]
    finally:
        store.close()
    good = {file_ref(path, settings.salt) for path, case in run.files.items() if case.good}
    assert {p["source_ref"] for p in payloads} == good
    text = json.dumps(payloads)
    assert "DOE^JOHN" not in text and "MRN12345" not in text and "Smith" not in text  # names never reach payloads


def test_memory_stays_under_the_ceiling(file_index_run: FileIndexRun) -> None:
    run = file_index_run
    print(f"file index: resting {run.resting_mb:.0f} MiB, peak {run.peak_mb:.0f} MiB")
    assert run.peak_mb <= run.resting_mb + INDEXING_CEILING_MB, (run.resting_mb, run.peak_mb)
