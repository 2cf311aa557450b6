"""The queue with real workers against a store held by another process, and bad files mixed into good ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from services.index import QdrantEdgeStore
from services.pipeline.ledger import Ledger, file_key
from services.pipeline.sources import build_items
from services.pipeline.submission import submit
from tests.workers.conftest import REPO, WorkerProcess, cxr, queue_env, real_images, settings_of, wait_ledger
from workers.dispatch import make_publish

HOLD = """
import sys
from pathlib import Path
from services.index.lease import StoreLease
StoreLease(Path(sys.argv[1])).acquire()  # as a long optimize() would: never hands over
print("held", flush=True)
sys.stdin.readline()
"""


def _hold_store(root: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(root)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def _release(proc: subprocess.Popen) -> None:
    proc.kill()  # the flock dies with the process
    proc.wait(timeout=30)


def test_store_held_by_another_process_work_is_retried_then_lands_or_is_reported(
    tmp_path: Path, cxr_public: Path, tiny_checkpoint: Path, redis_db_url: str, workers: list
) -> None:
    env = queue_env(tmp_path / "data", redis_db_url, tiny_checkpoint, store_wait_s=0.5, task_retries=1, max_attempts=4)
    settings = settings_of(env)
    ledger = Ledger(settings.ledger_path)
    paths = real_images(cxr_public, 260)[240:256]
    first, second = build_items(paths[:8])[0], build_items(paths[8:])[0]
    workers.append(WorkerProcess(env, tmp_path / "worker.log"))

    # A: held for a while -> retried (attempts counted, reason kept), nothing lost, then it lands
    holder = _hold_store(settings.store_path)
    try:
        submit(settings, first, publish=make_publish(settings))
        keys = [file_key(p, settings.salt) for p in paths[:8]]
        wait_ledger(
            settings,
            lambda c: all(i.attempts >= 2 for i in ledger.items(keys)),
            timeout=60,
            what="a second attempt while the store is held",
        )
        item = ledger.get(keys[0])
        assert item.state != "failed" and "StoreLockedError" in (item.reason or ""), item
        assert ledger.counts()["indexed"] == 0
    finally:
        _release(holder)
    wait_ledger(settings, lambda c: c["indexed"] == 8, timeout=60, what="the held batch landing")

    # B: held for good -> after max_attempts the items are failed (dead letter) and listed, never dropped
    holder = _hold_store(settings.store_path)
    try:
        submit(settings, second, publish=make_publish(settings))
        wait_ledger(settings, lambda c: c["failed"] == 8, timeout=90, what="the items giving up")
        listed = json.loads(cxr(env, "failures", "--json").stdout)
        assert {f["key"] for f in listed} == {file_key(p, settings.salt) for p in paths[8:]}
        assert all(f["stage"] == "gave-up" and "StoreLockedError" in f["reason"] for f in listed), listed
        assert all(f["attempts"] == 4 for f in listed)
    finally:
        _release(holder)
    res = cxr(env, "retry", "--all")
    assert res.returncode == 0 and "re-armed 8" in res.stdout, res.stdout + res.stderr
    wait_ledger(settings, lambda c: c["indexed"] == 16, timeout=60, what="the retried items landing")
    workers[0].stop()
    with QdrantEdgeStore(settings.store_path) as store:
        assert store.count(settings.collection) == 16


def _bad_files(folder: Path, good: Path) -> dict[str, str]:
    """Bad inputs beside good ones; name -> the stage it must fail at."""
    (folder / "truncated.jpg").write_bytes(good.read_bytes()[:300])
    (folder / "notes.png").write_text("not an image at all\n")
    (folder / "empty.dcm").write_bytes(b"")
    Image.new("L", (8, 8), 128).save(folder / "tiny.png")
    os.mkfifo(folder / "pipe.dcm")  # walking must never open it (it would block)
    return {
        "truncated.jpg": "decode",
        "notes.png": "decode",
        "empty.dcm": "decode",
        "tiny.png": "decode",
        "pipe.dcm": "find",
    }


def test_bad_files_fail_alone_are_listed_and_retry_rearms_them(
    tmp_path: Path, cxr_public: Path, tiny_checkpoint: Path, redis_db_url: str, workers: list
) -> None:
    env = queue_env(tmp_path / "data", redis_db_url, tiny_checkpoint)
    settings = settings_of(env)
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = real_images(cxr_public, 280)[260:272]
    for p in good:
        (folder / p.name).write_bytes(p.read_bytes())
    bad = _bad_files(folder, good[0])
    res = cxr(env, "index", str(folder), "--queue")
    assert res.returncode == 3, res.stdout + res.stderr  # some failed (the FIFO, found at once)
    assert "pipe.dcm" in res.stdout
    workers.append(WorkerProcess(env, tmp_path / "worker.log"))
    total = len(good) + len(bad)
    wait_ledger(settings, lambda c: c["indexed"] + c["failed"] == total, timeout=90, what="the mixed batch")
    ledger = Ledger(settings.ledger_path)
    assert ledger.counts()["indexed"] == len(good)
    listed = {Path(f["path"]).name: f for f in json.loads(cxr(env, "failures", "--json").stdout)}
    assert set(listed) == set(bad)
    for name, stage in bad.items():
        assert listed[name]["stage"] == stage and listed[name]["reason"], listed[name]
        assert listed[name]["attempts"] <= 1  # permanent: never retried
    assert "empty" in listed["empty.dcm"]["reason"]
    assert "FIFO" in listed["pipe.dcm"]["reason"] or "pipe" in listed["pipe.dcm"]["reason"]
    table = cxr({**env, "COLUMNS": "250"}, "failures").stdout
    assert all(name in table for name in bad), table

    # The truncated file is replaced by a whole image: retrying its key re-arms it and it lands.
    fixed = real_images(cxr_public, 281)[280]
    (folder / "truncated.jpg").write_bytes(fixed.read_bytes())
    key = listed["truncated.jpg"]["key"]
    res = cxr(env, "retry", key)
    assert res.returncode == 0 and "re-armed 1" in res.stdout, res.stdout + res.stderr
    wait_ledger(settings, lambda c: c["indexed"] == len(good) + 1, timeout=60, what="the repaired file")
    assert ledger.get(key).state == "indexed"
    assert cxr(env, "retry", "file:/not/a/failed/item").returncode == 1
    workers[0].stop()
    with QdrantEdgeStore(settings.store_path) as store:
        assert store.count(settings.collection) == len(good) + 1
