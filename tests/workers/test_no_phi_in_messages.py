"""Hospital exports name folders after patients: no part of such a name may reach Redis. A real Redis, the real
`submit` and a real embed worker: the messages are read from the queue lists as they wait there."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import redis

from services.pipeline.ledger import Ledger, file_key
from services.pipeline.refs import file_ref
from services.pipeline.sources import build_items
from services.pipeline.submission import submit
from tests.services import wait_for
from tests.workers.conftest import WorkerProcess, queue_env, real_images, settings_of
from workers.dispatch import make_publish

PATIENT_PARTS = ("DOE", "JOHN", "MRN12345", "19600101")


def _messages(client: redis.Redis, queue: str) -> list[tuple[bytes, bytes]]:
    """(raw message, decoded body) of every message waiting in `queue` (kombu's Redis list, body in base64)."""
    out = []
    for raw in client.lrange(queue, 0, -1):
        envelope = json.loads(raw)
        body = envelope["body"]
        decoded = base64.b64decode(body) if envelope["properties"].get("body_encoding") == "base64" else body.encode()
        out.append((raw, decoded))
    return out


def _assert_no_patient(blob: bytes, where: str) -> None:
    text = blob.decode("utf-8", errors="replace").upper()
    leaked = [part for part in PATIENT_PARTS if part in text]
    assert not leaked, f"{leaked} found in {where}: {text[:300]}"


def test_a_folder_named_after_a_patient_never_reaches_redis(
    tmp_path: Path, cxr_public: Path, tiny_checkpoint: Path, redis_db_url: str, workers: list
) -> None:
    env = queue_env(tmp_path / "data", redis_db_url, tiny_checkpoint, queue_batch_size=4)
    settings = settings_of(env)
    folder = tmp_path / "export" / "DOE^JOHN_19600101_MRN12345"
    folder.mkdir(parents=True)
    for i, src in enumerate(real_images(cxr_public, 6)):
        shutil.copy(src, folder / f"DOE^JOHN_{i}{src.suffix}")
    items, _ = build_items([tmp_path / "export"])
    assert (
        submit(settings, items, publish=make_publish(settings)).sent == 6
    )  # no worker runs: the messages wait in Redis

    ledger = Ledger(settings.ledger_path)
    rows = ledger.items([file_key(i.path, settings.salt) for i in items])
    assert len(rows) == 6
    for row in rows:  # opaque key, the same value as the payload's source_ref; the path stays in the row
        _assert_no_patient(row.key.encode(), "a ledger key")
        assert row.key == file_ref(row.path, settings.salt) and "DOE^JOHN" in row.path
    client = redis.Redis.from_url(redis_db_url)
    embed = _messages(client, "embed")
    assert len(embed) == 2  # 6 keys in tasks of 4
    for raw, body in embed:
        _assert_no_patient(raw, "an embed message")
        _assert_no_patient(body, "an embed message's body")

    # The embed worker alone (no index writer): its hand-over to the writer waits in Redis too.
    workers.append(WorkerProcess(env, tmp_path / "worker.log", "--queues", "embed", "--no-sweep"))
    wait_for(lambda: client.llen("index") == 2, timeout=120, what="the embed worker's messages to the index writer")
    index = _messages(client, "index")
    for raw, body in index:
        _assert_no_patient(raw, "an index message")
        _assert_no_patient(body, "an index message's body")
    points = [p for _, body in index for p in json.loads(body)[0][0]["points"]]  # body: [args, kwargs, embed]
    assert sorted(p["key"] for p in points) == sorted(r.key for r in rows)
    assert all(p["payload"]["source_ref"] == p["key"] for p in points)
