"""The queue over the whole hostile corpus in one submission: real Redis, one real `cxr worker` (embed pool, index
writer, sweep). Each bad file ends failed at the decode stage with its reason and is never retried; every good film
is indexed; the worker finishes the batch (nothing stuck) and no worker process passes the memory ceiling."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from services.index import open_store
from services.pipeline.ledger import Item, Ledger, file_key
from services.pipeline.sources import build_items
from services.pipeline.submission import submit
from tests.hostile.corpus import Case, write_corpus
from tests.hostile.memory import peaks_mb
from tests.services import RedisServer
from tests.workers.conftest import WorkerProcess, queue_env, settings_of, wait_ledger
from workers.dispatch import make_publish

# Any one worker process (the supervisor, a celery parent, a pool child with torch and the model loaded): a pool
# child rests near 500 MiB here; it decodes one file at a time, and the largest good film (RG1, 3.6 Mpx at 44 B/px)
# adds ~160 MiB. One bomb decoded instead of refused would add 2 GB or more.
CEILING_MB = 1024
REDIS_DB = 13  # a database of its own on the session's Redis, flushed before and after


@dataclass(frozen=True)
class QueueRun:
    files: dict[Path, Case]
    items: dict[Path, Item]
    indexed_refs: set[str]
    salt: bytes
    peaks: dict[int, float]


@pytest.fixture(scope="module")
def queue_run(
    corpus: list[Case], tiny_checkpoint: Path, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> QueueRun:
    root = tmp_path_factory.mktemp("hostile-queue")
    url = redis_server.url.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    broker = redis.Redis.from_url(url)
    broker.flushdb()
    env = queue_env(root / "data", url, tiny_checkpoint)
    settings = settings_of(env)
    files = write_corpus(corpus, root / "export")
    items, unfound = build_items([root / "export"])
    assert not unfound
    worker = WorkerProcess(env, root / "worker.log")
    try:
        submit(settings, items, publish=make_publish(settings))
        try:
            wait_ledger(
                settings, lambda c: c["indexed"] + c["failed"] == len(files), timeout=90, what="the hostile batch"
            )
        except TimeoutError:
            worker.dump_stacks()
            counts = Ledger(settings.ledger_path).counts()
            raise AssertionError(f"the batch did not finish: {counts}\n{worker.tail()}") from None
        peaks = peaks_mb(worker.proc.pid)
        ledger = Ledger(settings.ledger_path)
        rows = {path: ledger.get(file_key(path, settings.salt)) for path in files}
    finally:
        worker.stop()
        broker.flushdb()
        broker.close()
    store = open_store(settings)
    try:
        refs = {p.payload["source_ref"] for p in store.scroll(settings.collection)}
    finally:
        store.close()
    return QueueRun(files, rows, refs, settings.salt, peaks)


def test_each_file_is_indexed_or_fails_at_decode_with_its_reason(queue_run: QueueRun) -> None:
    got, want = {}, {}
    for path, case in queue_run.files.items():
        item = queue_run.items[path]
        want[case.id] = ("indexed", None) if case.good else ("failed", "decode", case.says, 1)
        if item.state == "indexed":
            got[case.id] = ("indexed", None)
        else:
            says = case.says if case.says and case.says in (item.reason or "") else item.reason
            got[case.id] = (item.state, item.stage, says, item.attempts)
    assert got == want


def test_the_good_films_of_the_batch_are_in_the_store(queue_run: QueueRun) -> None:
    good = {file_key(path, queue_run.salt) for path, case in queue_run.files.items() if case.good}
    assert queue_run.indexed_refs == good


def test_no_worker_process_passes_the_ceiling(queue_run: QueueRun) -> None:
    print(f"queue: worker processes' peaks {sorted(round(m) for m in queue_run.peaks.values())} MiB")
    assert len(queue_run.peaks) >= 3  # the supervisor, the embed and index celery parents (and their pool children)
    assert max(queue_run.peaks.values()) <= CEILING_MB, queue_run.peaks
