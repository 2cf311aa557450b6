"""The embedded store's own behaviour: one owner per shard directory, interrupted creates, real HNSW builds."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import qdrant_edge as qe

from services.errors import StoreError, StoreLockedError
from services.index import INDEXED_FIELDS, PointRecord, QdrantEdgeStore
from services.index.edge import META_FILE
from services.index.lease import StoreLease
from tests.index.conftest import clustered

REPO = Path(__file__).resolve().parents[2]
HOLDER = """
import sys, time
from pathlib import Path
from services.index import QdrantEdgeStore
from services.index.lease import StoreLease

mode = sys.argv[3]
if mode == "lease":  # hold the store as a long optimize would: never hand it over
    lease = StoreLease(Path(sys.argv[1]))
    lease.acquire()
    print("held", flush=True)
else:  # an ordinary long-lived owner (worker, API) that lingers on its shards
    store = QdrantEdgeStore(Path(sys.argv[1]), linger_s=3600)
    print(store.count(sys.argv[2]), flush=True)
sys.stdin.readline()
if mode != "lease":
    print(store.count(sys.argv[2]), flush=True)  # it gets the store back after the other process used it
    sys.stdin.readline()
"""


def _store_with_points(root: Path, name: str = "cxr", n: int = 5) -> QdrantEdgeStore:
    store = QdrantEdgeStore(root)
    store.create_collection(name, 8)
    vectors = np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32)
    store.upsert(name, [PointRecord(str(uuid.uuid4()), v, {"label": "x"}) for v in vectors])
    return store


def _holder(root: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root), "cxr", mode],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_lingering_owner_hands_the_store_to_another_process(tmp_path: Path) -> None:
    _store_with_points(tmp_path).close()
    holder = _holder(tmp_path, "linger")
    try:
        assert holder.stdout.readline().strip() == "5", holder.stderr.read()
        store = QdrantEdgeStore(tmp_path, wait_s=10)
        assert store.count("cxr") == 5  # the owner saw us waiting and closed its shards
        store.upsert("cxr", [PointRecord(str(uuid.uuid4()), np.ones(8, np.float32), {"label": "y"})])
        store.close()
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "6"  # and took it back, seeing our write
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_an_owner_that_never_hands_over_gives_store_locked_error(tmp_path: Path) -> None:
    _store_with_points(tmp_path).close()
    holder = _holder(tmp_path, "lease")
    try:
        assert holder.stdout.readline().strip() == "held", holder.stderr.read()
        store = QdrantEdgeStore(tmp_path, wait_s=0.3)
        with pytest.raises(StoreLockedError, match=str(tmp_path)) as err:
            store.count("cxr")
        assert "another process" in str(err.value) and err.value.hint
        with pytest.raises(StoreLockedError):
            store.delete_collection("cxr")
        assert (tmp_path / "cxr" / META_FILE).exists()
    finally:
        holder.kill()  # SIGKILL: the kernel drops its flock
        holder.wait(timeout=30)
    assert store.count("cxr") == 5  # the lock went with the process


def test_two_store_objects_in_one_process_take_turns(tmp_path: Path) -> None:
    first = _store_with_points(tmp_path)
    first._linger = 3600.0  # would keep its shards open, but hands them over when asked
    second = QdrantEdgeStore(tmp_path, wait_s=10)
    assert second.has_collection("cxr")  # metadata needs no lease
    assert len(second.search("cxr", np.ones(8, np.float32), 3)) == 3
    assert not first._lease.held
    assert first.count("cxr") == 5
    first.close()
    second.close()


def test_close_flushes_and_the_store_reopens_on_use(tmp_path: Path) -> None:
    store = _store_with_points(tmp_path)
    store.close()
    assert store.count("cxr") == 5
    store.close()
    with QdrantEdgeStore(tmp_path) as again:
        assert again.count("cxr") == 5


def test_interrupted_create_is_cleared(tmp_path: Path) -> None:
    (tmp_path / "half" / "segments").mkdir(parents=True)  # a crash before the collection record was written
    store = QdrantEdgeStore(tmp_path)
    assert not store.has_collection("half")
    assert store.collections() == []
    store.create_collection("half", 4)
    assert store.has_collection("half") and store.count("half") == 0
    store.close()


def test_payload_indexes_and_hnsw_build(tmp_path: Path) -> None:
    store = QdrantEdgeStore(tmp_path, indexing_threshold_kb=10)
    data = clustered(n=1000, dim=16, seed=3)
    store.create_collection("cxr", 16)
    store.upsert("cxr", [PointRecord(pid, v, {}) for pid, v in zip(data.ids, data.vectors, strict=True)])
    shard = store._shard("cxr")  # engine internals: what the protocol deliberately does not expose
    assert set(shard.info().payload_schema) == set(INDEXED_FIELDS)
    assert shard.info().indexed_vectors_count == 0
    store.optimize("cxr")
    assert store._shard("cxr").info().indexed_vectors_count == 1000
    store.close()


def test_a_collection_of_an_older_cxr_gains_the_payload_indexes_added_since(tmp_path: Path) -> None:
    import qdrant_edge as qe

    store = QdrantEdgeStore(tmp_path)
    store.create_collection("old", 16)
    shard = store._shard("old")  # engine internals: make it look like a collection from before source_ref
    shard.update(qe.UpdateOperation.delete_field_index("source_ref"))
    shard.flush()
    assert "source_ref" not in shard.info().payload_schema
    store.close()
    again = QdrantEdgeStore(tmp_path)
    again.create_collection("old", 16)  # what every indexing run does first
    assert set(again._shard("old").info().payload_schema) == set(INDEXED_FIELDS)
    again.close()


def test_unreadable_collection_record(tmp_path: Path) -> None:
    store = _store_with_points(tmp_path)
    store.close()
    (tmp_path / "cxr" / META_FILE).write_text("{not json")
    with pytest.raises(StoreError, match="unreadable collection record"):
        QdrantEdgeStore(tmp_path).count("cxr")


def _root_near_path_max(tmp_path: Path, room: int = 40) -> Path:
    """A directory whose path leaves about `room` characters of Linux's PATH_MAX (4096): enough for the lease files
    and a collection directory, too few for the files the engine creates below that."""
    root, target = tmp_path, 4096 - room
    while len(str(root)) + 201 <= target:
        root = root / ("d" * 200)
    root = root / ("d" * max(1, target - len(str(root)) - 1))
    root.mkdir(parents=True)
    return root


def test_a_create_the_engine_fails_gives_the_lease_back(tmp_path: Path) -> None:
    root = _root_near_path_max(tmp_path)
    store = QdrantEdgeStore(root, wait_s=0.3)
    with pytest.raises(StoreError, match="cannot create the embedded store"):
        store.create_collection("cxr", 8)  # the engine's own files would pass PATH_MAX
    assert not store.has_collection("cxr") and not store._lease.held
    other = StoreLease(root, wait_s=0.3)
    other.acquire()  # another opener gets the store without waiting for the failed one's close()
    other.close()
    store.close()


def test_a_create_refused_by_an_occupied_directory_gives_the_lease_back(tmp_path: Path) -> None:
    config = qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=8, distance=qe.Distance.Cosine))
    squatter = qe.EdgeShard.create(str(tmp_path / "cxr"), config)  # open outside the lease, no collection record
    store = QdrantEdgeStore(tmp_path, wait_s=0.3)
    try:
        with pytest.raises(StoreLockedError):
            store.create_collection("cxr", 8)  # its partial directory cannot be cleared while the shard is open
        with QdrantEdgeStore(tmp_path, wait_s=0.3) as other:
            other.create_collection("other", 8)  # takes the lease the failed create gave back
    finally:
        squatter.close()
    store.create_collection("cxr", 8)  # once the shard is closed, the partial directory is cleared
    assert store.count("cxr") == 0
    store.close()
