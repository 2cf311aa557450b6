"""Reliability of the queue with real processes: a worker SIGKILLed mid-batch, Redis down while files arrive, and
a file whose worker is killed each time it is started.

Each ends with the collection compared against the set of images handed in: every good image exactly once.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import numpy as np

from services.index import QdrantEdgeStore
from services.index.payload import point_id
from services.pipeline.ledger import Ledger, file_key
from services.pipeline.sources import build_items
from services.pipeline.submission import submit
from tests.services import RedisServer, wait_for
from tests.workers.conftest import (
    WorkerProcess,
    cxr,
    queue_env,
    real_images,
    session_processes,
    settings_of,
    wait_ledger,
)


def _expected_ids(paths: list[Path]) -> set[str]:
    return {point_id(sop_uid=None, content_sha256=hashlib.sha256(p.read_bytes()).hexdigest()) for p in paths}


def _stored(settings) -> list:  # noqa: ANN001
    with QdrantEdgeStore(settings.store_path) as store:
        return list(store.scroll(settings.collection))


def test_worker_killed_mid_batch_loses_and_duplicates_nothing(
    tmp_path: Path, cxr_public: Path, tiny_checkpoint: Path, redis_db_url: str, workers: list
) -> None:
    """Point ids come from the content, so the store cannot hold a file twice whatever happens; a duplicate shows
    in the deliveries instead: the ledger counts every start of an item (a claim), and every point names its
    source file. Each file must end as exactly one point under its own source, and be started again only if the
    kill caught it in flight."""
    # requeue_after_s: the sweep re-sends items queued or processing untouched this long (900 s in production). At
    # the suite's 20 s it re-sent this whole backlog while its first messages still waited, which started 72 of 160
    # items twice. At 600 s, 16 items stayed 'processing' past this test's bound in one run of eight: Redis still
    # held the dead worker's 2 tasks in `unacked`, most likely behind the `unacked_mutex` it died holding (kombu's
    # lock expires after 300 s), and the heartbeat reaper leaves items claimed after a dead worker's last beat to
    # this re-send.
    # 60 s is longer than this backlog waits and shorter than the bound.
    env = queue_env(tmp_path / "data", redis_db_url, tiny_checkpoint, requeue_after_s=60)
    settings = settings_of(env)
    paths = real_images(cxr_public, 200)
    keys = [file_key(p, settings.salt) for p in paths]
    items, _ = build_items(paths)
    t0 = time.monotonic()
    assert submit(settings, items, publish=None).recorded == 200
    first = WorkerProcess(env, tmp_path / "worker1.log")
    workers.append(first)
    # Items turn 'indexed' only at the writer's deferred flush, so kill once work has started, mid-run.
    wait_ledger(settings, lambda c: c["processing"] + c["indexed"] >= 24, timeout=90, what="the first batches")
    first.kill()  # SIGKILL the worker with its pool and the index writer, whatever they were doing
    ledger = Ledger(settings.ledger_path)
    at_kill = {i.key: i for i in ledger.items(keys)}
    counts_at_kill = ledger.counts()
    assert counts_at_kill["indexed"] < 200, "the run finished before the kill; nothing was tested"
    # The sweep of the next worker re-sends what was never queued; Redis restores what the dead worker held.
    second = WorkerProcess(env, tmp_path / "worker2.log")
    workers.append(second)
    counts = wait_ledger(
        settings, lambda c: c["indexed"] + c["failed"] == 200, timeout=120, what="every item indexed or failed"
    )
    second.stop()
    failed = ledger.failures()
    assert counts["failed"] == 0, [(f.key, f.stage, f.reason) for f in failed]
    points = _stored(settings)
    ids = [p.id for p in points]
    expected = _expected_ids(paths)
    lost = expected - set(ids)
    # deliveries: starts per item, after the kill, by where the kill found the item
    final = {i.key: i for i in ledger.items(keys)}
    assert len(final) == 200 and {i.state for i in final.values()} == {"indexed"}
    rerun = {k: final[k].attempts - at_kill[k].attempts for k in keys}
    done_before = [k for k in keys if at_kill[k].state == "indexed"]
    never_started = [k for k in keys if at_kill[k].attempts == 0]
    in_flight = [k for k in keys if at_kill[k].state != "indexed" and at_kill[k].attempts > 0]
    # points per source file: one each, under its own file's reference, with its own content's id
    per_source = Counter(p.payload["source_ref"] for p in points)
    id_of_source = {p.payload["source_ref"]: p.id for p in points}
    groups = {"indexed before": done_before, "never started": never_started, "in flight": in_flight}
    starts = {what: dict(Counter(rerun[k] for k in group)) for what, group in groups.items()}
    print(
        f"\nkill test: 200 images; killed at {counts_at_kill}; after restart: lost {len(lost)}, points {len(points)},"
        f" sources {len(per_source)} (most points for one source {max(per_source.values())}); starts after the kill"
        f" by state at the kill {starts}; {time.monotonic() - t0:.1f} s"
    )
    assert not lost and set(ids) == expected and len(points) == len(expected)
    assert set(per_source) == set(keys) and set(per_source.values()) == {1}
    assert all(id_of_source[k] == final[k].point_id for k in keys)
    assert all(rerun[k] == 0 for k in done_before), "an item indexed before the kill was started again"
    assert all(rerun[k] == 1 for k in never_started), "an item waiting at the kill was started more than once"
    assert all(rerun[k] <= 1 for k in in_flight), "an item in flight at the kill was started more than once more"


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


def _embed_pool_processes(session: int) -> list[int]:
    """The prefork pool processes of the embed queue's celery worker in the `cxr worker` session `session` (the
    children of the celery process started with `-Q embed`)."""
    procs = session_processes(session)
    mains = {pid for pid, (_, argv) in procs.items() if "celery" in argv and "embed" in argv and "-Q" in argv}
    return [pid for pid, (ppid, _) in procs.items() if ppid in mains]


def test_a_file_that_kills_its_worker_every_time_ends_gave_up(
    tmp_path: Path, cxr_public: Path, tiny_checkpoint: Path, redis_db_url: str, workers: list
) -> None:
    """A file whose decode gets the process decoding it killed (as the kernel's OOM killer kills one that decodes a
    huge film: SIGKILL, nothing caught, nothing recorded) is redelivered by Celery (reject on worker lost) and
    started again, until the ledger's attempt counter stops it: failed at stage 'gave-up' after max_attempts
    starts, listed by `cxr failures`, while the files around it are indexed. cxr has no crash hook, so the test
    plays the OOM killer: it SIGKILLs the embed pool process each time that process starts the file."""
    from pydicom.uid import JPEGLSLossless

    from services.imaging import decode_image
    from tests.imaging.conftest import dicom_bytes, make_dataset
    from workers.dispatch import make_publish

    env = queue_env(tmp_path / "data", redis_db_url, tiny_checkpoint, max_attempts=3)
    settings = settings_of(env)
    # A 5,000 px film in JPEG-LS, with noise: JPEG-LS has no reduced decode, so each start spends a second or more
    # decoding it, time to catch the process at it. (Uncompressed, the reduced decode now takes about 0.1 s, which a
    # 0.2 s poll can miss: the file is then indexed and never given up.)
    side = 5000
    noise = np.random.default_rng(0).integers(0, 64, (side, side))
    film = ((np.add.outer(np.arange(side), np.arange(side)) % 4000) + noise).astype(np.uint16)
    ds = make_dataset(film)
    ds.compress(JPEGLSLossless, encoding_plugin="pyjpegls")
    heavy = tmp_path / "heavy.dcm"
    heavy.write_bytes(dicom_bytes(ds))
    assert decode_image(heavy).pixels.shape == (side, side)  # a good file: only its worker's death stops it
    key = file_key(heavy, settings.salt)
    good = real_images(cxr_public, 300)[290:298]
    publish = make_publish(settings)
    assert submit(settings, build_items([heavy])[0], publish=publish).recorded == 1
    assert submit(settings, build_items(good)[0], publish=publish).recorded == 8
    worker = WorkerProcess(env, tmp_path / "worker.log", "--concurrency", "1")
    workers.append(worker)
    ledger = Ledger(settings.ledger_path)
    kills: list[int] = []  # the attempt each kill ended

    def kill_at_each_start() -> bool:
        item = ledger.get(key)
        if item.state == "failed":
            return True
        if item.state == "processing" and item.attempts > len(kills):
            pool = _embed_pool_processes(worker.proc.pid)
            for pid in pool:
                os.kill(pid, signal.SIGKILL)
            if pool:
                kills.append(item.attempts)
        return False

    wait_for(kill_at_each_start, timeout=240, what="the file to be given up")
    wait_ledger(settings, lambda c: c["indexed"] == 8, timeout=120, what="the files around it")
    item = ledger.get(key)
    print(f"\ngave-up test: killed at attempts {kills}; {item.stage}: {item.reason}")
    assert kills == [1, 2, 3]
    assert (item.state, item.stage, item.attempts) == ("failed", "gave-up", 3)
    assert item.reason.startswith("gave up after 3 attempt(s)")
    listed = json.loads(cxr(env, "failures", "--json").stdout)
    assert [(f["key"], f["stage"], f["attempts"]) for f in listed] == [(key, "gave-up", 3)]
    worker.stop()
    stored = _stored(settings)
    assert len(stored) == 8 and key not in {p.payload["source_ref"] for p in stored}
