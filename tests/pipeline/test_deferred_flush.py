"""The index writer's deferred flush, on the real embedded store and ledger: items turn 'indexed' only after the
flush that made their points durable, even when the writer process is SIGKILLed between upsert and flush; the
flush comes once per many points, after a delay, or as soon as nothing else is in flight."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np

from services.index import QdrantEdgeStore
from services.pipeline.batch_jobs import PointBatch, QueuedPoint
from services.pipeline.index_writer import DeferredWriter
from services.pipeline.ledger import Ledger
from tests.services import wait_for

REPO = Path(__file__).resolve().parents[2]
DIM = 16


def _batch(keys: list[str], seed: int) -> PointBatch:
    vectors = np.random.default_rng(seed).normal(size=(len(keys), DIM)).astype(np.float32)
    points = [
        QueuedPoint(k, str(uuid.uuid5(uuid.NAMESPACE_URL, k)), v, {"label": "x"})
        for k, v in zip(keys, vectors, strict=True)
    ]
    return PointBatch.from_json(PointBatch("c", DIM, None, points).to_json())  # as it travels: base64 vectors


def _claimed(ledger: Ledger, keys: list[str]) -> None:
    for k in keys:
        ledger.record(k, f"/x/{k}", origin="file", collection="c")
    ledger.claim(keys, max_attempts=5, collection="c")


_KILLED_WRITER = """
import json, os, signal, sys
from pathlib import Path
from services.index import QdrantEdgeStore
from services.pipeline.index_writer import DeferredWriter
from services.pipeline.ledger import Ledger
from tests.pipeline.test_deferred_flush import _batch, _claimed

root = Path(sys.argv[1])
ledger, store = Ledger(root / "ledger.sqlite3"), QdrantEdgeStore(root / "store", linger_s=600)
store.create_collection("c", 16)
a, b = [f"a{i}" for i in range(20)], [f"b{i}" for i in range(30)]
_claimed(ledger, [*a, *b, "elsewhere"])  # 'elsewhere' is still being embedded: no flush for lack of work
writer = DeferredWriter(store, ledger, max_points=10**6, max_delay_s=3600, timer=False)
writer.write(_batch(a, 1))
writer.flush()
writer.write(_batch(b, 2))  # upserted, not flushed: the process dies now
print(json.dumps({"pending": writer.pending, "flushes": writer.flushes}), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_writer_killed_between_upsert_and_flush_marks_nothing_it_did_not_make_durable(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -9, proc.stderr
    assert json.loads(proc.stdout) == {"pending": 30, "flushes": 1}
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    a, b = [f"a{i}" for i in range(20)], [f"b{i}" for i in range(30)]
    with QdrantEdgeStore(tmp_path / "store") as store:
        indexed = [i for i in ledger.items([*a, *b]) if i.state == "indexed"]
        assert sorted(i.key for i in indexed) == sorted(a)
        stored = {p.id for p in store.retrieve("c", [i.point_id for i in indexed])}
        assert stored == {i.point_id for i in indexed}  # every item marked indexed is in the store
        assert {i.state for i in ledger.items(b)} == {"processing"}  # the sweep sends these again
        # Measured engine behaviour (services/index/edge.py): the write-ahead log kept the unflushed upserts
        # through the SIGKILL (a power cut could lose them; the ledger above does not count on them).
        assert store.count("c") == 50
        # The sweep sends b again (and 'elsewhere' turned out bad): re-claimed, re-embedded, re-written; the
        # points are found stored, marked after a flush, and nothing is duplicated.
        ledger.mark_failed("elsewhere", "decode", "not an image", permanent=True, collection="c")
        assert len(ledger.claim(b, max_attempts=5, collection="c")[0]) == 30
        writer = DeferredWriter(store, ledger, max_points=10**6, max_delay_s=3600, timer=False)
        out = writer.write(_batch(b, 2))
        assert (out.indexed, out.skipped) == (0, 30) and writer.pending == 0  # nothing else in flight: flushed
        assert {i.state for i in ledger.items(b)} == {"indexed"} and store.count("c") == 50


def test_the_writer_flushes_when_nothing_else_is_in_flight_else_per_points_or_delay(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    with QdrantEdgeStore(tmp_path / "store") as store:
        store.create_collection("c", DIM)
        keys = [f"k{i}" for i in range(40)]
        _claimed(ledger, keys)
        writer = DeferredWriter(store, ledger, max_points=16, max_delay_s=3600, timer=False)
        writer.write(_batch(keys[:8], 1))  # 32 others in flight: wait
        assert writer.pending == 8 and ledger.counts()["indexed"] == 0
        writer.write(_batch(keys[8:16], 2))  # 16 points wait: the point limit flushes them
        assert writer.pending == 0 and ledger.counts()["indexed"] == 16 and writer.flushes == 1
        writer.write(_batch(keys[16:32], 3))  # 16 again: flushed at once
        writer.write(_batch(keys[32:38], 4))  # 2 items still in flight
        assert writer.pending == 6
        writer.write(_batch(keys[38:], 5))  # the last ones: nothing else in flight, so no waiting for more
        assert writer.pending == 0 and ledger.counts()["indexed"] == 40 and writer.flushes == 3
        assert store.count("c") == 40

        later = [f"t{i}" for i in range(10)]
        _claimed(ledger, later)
        for n, (delay, idle) in enumerate([(0.3, 3600.0), (3600.0, 0.2)]):  # the oldest waited; no batch came
            timed = DeferredWriter(store, ledger, max_points=10**6, max_delay_s=delay, idle_s=idle)
            timed.write(_batch(later[4 * n : 4 * n + 4], 6 + n))  # more in flight: only the timer flushes these
            assert timed.pending == 4
            wait_for(lambda n=n: ledger.counts()["indexed"] == 44 + 4 * n, timeout=30, what="the timer's flush")
            assert timed.pending == 0 and timed.flushes == 1
            timed.close()


def test_flush_is_free_when_nothing_was_written_and_a_hand_over_flushes_what_was(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with QdrantEdgeStore(root, linger_s=0) as store:  # hands the store over after every call
        store.create_collection("c", DIM)
        batch = _batch(["p0", "p1"], 7)
        from services.index import PointRecord

        records = [PointRecord(p.point_id, p.vector, p.payload) for p in batch.points]
        store.upsert("c", records, flush=False)  # the hand-over after this call flushed and closed the shard
        assert not store._shards and "c" not in store._dirty  # noqa: SLF001 - the state this test is about
        store.flush("c")  # nothing left to sync: does not even reopen the shard
        assert not store._shards  # noqa: SLF001
    with QdrantEdgeStore(root) as again:
        assert again.count("c") == 2
