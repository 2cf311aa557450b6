"""Reliability of the queue with real processes: a worker SIGKILLed mid-batch, and Redis down while files arrive.

Both end with the collection compared against the set of images handed in: every good image exactly once.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from services.index import QdrantEdgeStore
from services.index.payload import point_id
from services.pipeline.ledger import Ledger, file_key
from services.pipeline.sources import build_items
from services.pipeline.submission import submit
from tests.services import RedisServer
from tests.workers.conftest import WorkerProcess, cxr, queue_env, real_images, settings_of, wait_ledger


def _expected_ids(paths: list[Path]) -> set[str]:
    return {point_id(sop_uid=None, content_sha256=hashlib.sha256(p.read_bytes()).hexdigest()) for p in paths}


def _stored(settings) -> list:  # noqa: ANN001
    with QdrantEdgeStore(settings.store_path) as store:
        return list(store.scroll(settings.collection))


def test_worker_killed_mid_batch_loses_and_duplicates_nothing(
    tmp_path: Path, cxr_public: Path, tiny_checkpoint: Path, redis_db_url: str, workers: list
) -> None:
    env = queue_env(tmp_path / "data", redis_db_url, tiny_checkpoint)
    settings = settings_of(env)
    paths = real_images(cxr_public, 200)
    items, _ = build_items(paths)
    t0 = time.monotonic()
    assert submit(settings, items, publish=None).recorded == 200
    first = WorkerProcess(env, tmp_path / "worker1.log")
    workers.append(first)
    # Items turn 'indexed' only at the writer's deferred flush, so kill once work has started, mid-run.
    wait_ledger(settings, lambda c: c["processing"] + c["indexed"] >= 24, timeout=90, what="the first batches")
    first.kill()  # SIGKILL the worker with its pool and the index writer, whatever they were doing
    at_kill = Ledger(settings.ledger_path).counts()
    assert at_kill["indexed"] < 200, "the run finished before the kill; nothing was tested"
    # The sweep of the next worker re-sends what was never queued; Redis restores what the dead worker held.
    second = WorkerProcess(env, tmp_path / "worker2.log")
    workers.append(second)
    counts = wait_ledger(
        settings, lambda c: c["indexed"] + c["failed"] == 200, timeout=120, what="every item indexed or failed"
    )
    second.stop()
    failed = Ledger(settings.ledger_path).failures()
    assert counts["failed"] == 0, [(f.key, f.stage, f.reason) for f in failed]
    points = _stored(settings)
    ids = [p.id for p in points]
    expected = _expected_ids(paths)
    lost = expected - set(ids)
    duplicates = len(ids) - len(set(ids)) + len(points) - len({p.payload["content_sha256"] for p in points})
    rerun = sum(
        1 for i in Ledger(settings.ledger_path).items([file_key(p, settings.salt) for p in paths]) if i.attempts > 1
    )
    print(
        f"\nkill test: 200 images; killed at {at_kill}; after restart: lost {len(lost)}, duplicates {duplicates},"
        f" points {len(points)}, items started more than once {rerun}, {time.monotonic() - t0:.1f} s"
    )
    assert not lost and duplicates == 0
    assert set(ids) == expected and len(points) == len(expected)


def test_redis_down_while_files_arrive_then_everything_is_indexed(
    tmp_path: Path, cxr_public: Path, tiny_checkpoint: Path, workers: list
) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    try:
        env = queue_env(tmp_path / "data", redis.url, tiny_checkpoint)
        settings = settings_of(env)
        folder = tmp_path / "incoming"
        folder.mkdir()
        paths = real_images(cxr_public, 230)[200:230]  # other files than the kill test's
        for p in paths:
            (folder / p.name).write_bytes(p.read_bytes())
        worker = WorkerProcess(env, tmp_path / "worker.log")
        workers.append(worker)
        redis.stop()  # the outage starts with the worker running
        t0 = time.monotonic()
        res = cxr(env, "index", str(folder), "--queue", "--json", timeout=60)
        took = time.monotonic() - t0
        assert res.returncode == 0, res.stderr
        assert '"recorded": 30' in res.stdout and '"sent_now": 0' in res.stdout, res.stdout
        assert Ledger(settings.ledger_path).counts()["received"] == 30  # durable without the broker
        status = cxr(env, "status")
        assert status.returncode == 0 and "does not answer" in status.stdout, status.stdout
        redis.start()  # same port: the worker reconnects, the sweep sends what the ledger holds
        t1 = time.monotonic()
        # Celery's own reconnect back-off (2-30 s) plus a cold worker on a loaded 2-core machine: allow minutes.
        try:
            wait_ledger(settings, lambda c: c["indexed"] == 30, timeout=240, what="indexing after the outage")
        except TimeoutError as exc:
            counts = Ledger(settings.ledger_path).counts()
            raise AssertionError(f"{exc}; ledger {counts}; worker log tail:\n{worker.tail()}") from None
        healed = time.monotonic() - t1
        worker.stop()
        points = _stored(settings)
        print(
            f"\noutage test: 30 files submitted in {took:.2f} s with Redis down; all indexed {healed:.1f} s after it"
            f" returned; points {len(points)}"
        )
        assert {p.id for p in points} == _expected_ids([folder / p.name for p in paths]) and len(points) == 30
    finally:
        redis.stop()
