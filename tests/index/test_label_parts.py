"""One graph per label in the embedded store (services.index.label_parts): where points go, what a search visits,
and what happens as labels change, parts fill up, creates are interrupted and processes take turns. The store
contract (test_store_contract.py) runs on this layout too, as `edge-parts`."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from services.index import IndexTuning, PointRecord, QdrantEdgeStore, SearchFilter
from services.index.edge import META_FILE, PART_FILE, PARTS_DIR
from services.index.label_parts import REST, own_part
from tests.index.conftest import clustered, exact_top_k, held_out

DIM = 64


def _store(root: Path, parts: int, **tuning: object) -> QdrantEdgeStore:
    tuning = {"label_parts_from": 0} | tuning  # parts from the first point unless a test says otherwise
    return QdrantEdgeStore(root, linger_s=3600, tuning=IndexTuning(index_threads=1, label_parts=parts, **tuning))


def _labels_on_disk(root: Path, name: str = "cxr") -> dict[str, str | None]:
    """part directory -> the label its record names, read from the files."""
    return {p.parent.name: json.loads(p.read_text())["label"] for p in (root / name / PARTS_DIR).glob(f"*/{PART_FILE}")}


def _point(i: int, label: str | None, seed: int = 0, **payload: object) -> PointRecord:
    v = np.random.default_rng(seed * 100_000 + i).normal(size=DIM).astype(np.float32)
    return PointRecord(str(uuid.UUID(int=i + 1)), v, {"label": label, **payload})


def test_a_label_filter_searches_its_own_graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The case one graph fails (test_index_refresh: a label carried by 2 of 8 clusters, queried from the others,
    no exact policy, the engine made to walk the graph): in one graph per label the filter is an unfiltered
    search of the label's own graph, and finds the true neighbours. Both layouts, same data, same queries."""
    monkeypatch.setattr("services.index.edge_params.ENGINE_FULL_SCAN_KB", 1)
    data = clustered(n=3000, dim=DIM, clusters=8, noise=0.5, seed=5)
    rng = np.random.default_rng(5)
    label = np.where((data.cluster < 2) | (rng.random(3000) < 0.02), "b", "a")
    points = [PointRecord(pid, v, {"label": str(x)}) for pid, v, x in zip(data.ids, data.vectors, label, strict=True)]
    keep = np.flatnonzero(label == "b")
    queries = held_out(data, 45, noise=0.5, seed=6, clusters=range(2, 8))
    truth, _ = exact_top_k(data.vectors[keep], queries, 10)
    want = [{data.ids[keep[i]] for i in row} for row in truth]
    recall = {}
    for parts in (0, 4):
        store = _store(tmp_path / f"p{parts}", parts, threshold_points=500, search_hnsw_ef=64)
        store.create_collection("cxr", DIM)
        store.upsert("cxr", points)
        store.optimize("cxr")
        assert store.unindexed_count("cxr") == 0  # both graphs of the partitioned one are built
        rows = [store.search("cxr", q, 10, SearchFilter(must={"label": "b"})) for q in queries]
        store.close()
        assert all({h.payload["label"] for h in row} == {"b"} for row in rows)
        assert not parts or all(len(row) == 10 for row in rows)  # one graph's walk may even end short of 10
        recall[parts] = np.mean([len({h.id for h in row} & w) / 10 for row, w in zip(rows, want, strict=True)])
    assert recall[0] < 0.9, f"one graph reached {recall[0]:.2f}: the case no longer shows the failure"
    assert recall[4] >= 0.99, recall
    assert set(_labels_on_disk(tmp_path / "p4").values()) == {None, "a", "b"}


def test_a_point_whose_label_changes_moves_to_its_new_part(tmp_path: Path) -> None:
    store = _store(tmp_path, 4)
    store.create_collection("cxr", DIM)
    store.upsert("cxr", [_point(i, "normal" if i % 2 else "covid19") for i in range(20)])
    moved = _point(3, "covid19", patient_hash="p3")  # was normal
    store.upsert("cxr", [moved])
    assert store.count("cxr") == 20
    covid = {r.id for r in store.scroll("cxr", flt=SearchFilter(must={"label": "covid19"}))}
    normal = {r.id for r in store.scroll("cxr", flt=SearchFilter(must={"label": "normal"}))}
    assert moved.id in covid and moved.id not in normal and len(covid) == 11 and len(normal) == 9
    hits = store.search("cxr", moved.vector, 3)
    assert hits[0].id == moved.id and hits[0].payload["patient_hash"] == "p3"
    assert [h.id for h in hits].count(moved.id) == 1
    store.delete_points("cxr", [moved.id])
    assert store.count("cxr") == 19 and not store.existing_ids("cxr", [moved.id])
    store.close()


def test_labels_past_the_limit_and_points_without_one_share_the_rest(tmp_path: Path) -> None:
    store = _store(tmp_path, 2)
    store.create_collection("cxr", DIM)
    labels = ["a", "b", "c", "d", None]
    points = [_point(i, labels[i % 5]) for i in range(50)]
    store.upsert("cxr", points)
    on_disk = _labels_on_disk(tmp_path)
    assert on_disk == {REST: None, own_part("a"): "a", own_part("b"): "b"}  # first come, first served
    for label in ("a", "b", "c", "d"):
        got = {r.id for r in store.scroll("cxr", flt=SearchFilter(must={"label": label}))}
        assert got == {p.id for p in points if p.payload["label"] == label}
    both = store.search("cxr", points[2].vector, 50, SearchFilter(must={"label": ["a", "c"]}))
    assert {h.payload["label"] for h in both} == {"a", "c"} and len(both) == 20
    assert both[0].id == points[2].id  # label "c", from the rest
    not_a = store.search("cxr", points[0].vector, 50, SearchFilter(must_not={"label": ["a", "c"]}))
    assert len(not_a) == 30 and {h.payload["label"] for h in not_a} == {"b", "d", None}
    assert dict(store.facet("cxr", "label")) == {"a": 10, "b": 10, "c": 10, "d": 10}
    store.upsert("cxr", [_point(100, "e")])  # a later label never gets a part of its own
    assert len(_labels_on_disk(tmp_path)) == 3
    store.close()


def test_a_collection_keeps_the_layout_it_was_created_with(tmp_path: Path) -> None:
    flat = _store(tmp_path, 0)
    flat.create_collection("old", DIM)
    flat.create_collection("new_style", DIM)  # made flat too: the layout is the creator's
    flat.close()
    parted = _store(tmp_path, 8)
    parted.create_collection("parted", DIM)
    for name in ("old", "parted"):
        parted.upsert(name, [_point(i, "x" if i % 2 else "y") for i in range(10)])
        assert parted.count(name) == 10
        assert len(parted.search(name, _point(1, None).vector, 5, SearchFilter(must={"label": "x"}))) == 5
    parted.close()
    assert not (tmp_path / "old" / PARTS_DIR).exists()
    assert json.loads((tmp_path / "parted" / META_FILE).read_text())["label_parts"] == 8
    reopened = _store(tmp_path, 0)  # a store configured flat still reads the parts
    assert reopened.count("parted") == 10 and len(_labels_on_disk(tmp_path, "parted")) == 3
    assert {c.name: c.count for c in reopened.collections()} == {"new_style": 0, "old": 10, "parted": 10}
    reopened.delete_collection("parted")
    assert not (tmp_path / "parted").exists() and reopened.has_collection("old")
    reopened.close()


def test_a_half_made_part_is_made_again(tmp_path: Path) -> None:
    """A part whose record was never written (a process killed while creating it) is not a part: the next point
    of that label clears it and makes it again."""
    store = _store(tmp_path, 4)
    store.create_collection("cxr", DIM)
    store.close()
    half = tmp_path / "cxr" / PARTS_DIR / own_part("x")
    half.mkdir(parents=True)
    (half / "leftover").write_bytes(b"\0" * 100)
    store = _store(tmp_path, 4)
    assert store.count("cxr") == 0
    store.upsert("cxr", [_point(i, "x") for i in range(5)])
    assert not (half / "leftover").exists() and _labels_on_disk(tmp_path)[half.name] == "x"
    assert store.count("cxr") == 5
    store.close()


def test_a_part_another_store_object_adds_is_seen_after_the_hand_over(tmp_path: Path) -> None:
    """The parts are read while the store is held and forgotten when it is handed over, so a searcher sees a
    label's part that a writer made in the meantime (two objects take turns as two processes would)."""
    tuning = IndexTuning(label_parts=4, label_parts_from=0)
    searcher = QdrantEdgeStore(tmp_path, linger_s=0, tuning=tuning)
    writer = QdrantEdgeStore(tmp_path, linger_s=0, tuning=tuning)
    writer.create_collection("cxr", DIM)
    writer.upsert("cxr", [_point(i, "a") for i in range(5)])
    only_b = SearchFilter(must={"label": "b"})
    assert searcher.search("cxr", _point(0, None).vector, 5, only_b) == []
    writer.upsert("cxr", [_point(10 + i, "b") for i in range(5)])
    assert len(searcher.search("cxr", _point(0, None).vector, 5, only_b)) == 5
    assert searcher.count("cxr") == 10
    searcher.close()
    writer.close()


def test_a_small_collection_stays_one_graph_until_the_shared_one_is_large(tmp_path: Path) -> None:
    """Labels get parts only once the shared part holds `label_parts_from` points; what a label had before stays
    there, and a label filter finds both its part's points and those."""
    store = _store(tmp_path, 4, label_parts_from=30)
    store.create_collection("cxr", DIM)
    first = [_point(i, "a" if i % 2 else "b") for i in range(20)]
    store.upsert("cxr", first)
    assert _labels_on_disk(tmp_path) == {REST: None}  # 20 points: still one graph
    second = [_point(20 + i, "a" if i % 2 else "b") for i in range(20)]
    store.upsert("cxr", second[:10])  # the shared part reaches 30 points
    assert _labels_on_disk(tmp_path) == {REST: None}
    store.upsert("cxr", second[10:])
    assert _labels_on_disk(tmp_path) == {REST: None, own_part("a"): "a", own_part("b"): "b"}
    want = {p.id for p in first + second if p.payload["label"] == "a"}
    hits = store.search("cxr", first[1].vector, 40, SearchFilter(must={"label": "a"}))
    assert {h.id for h in hits} == want and hits[0].id == first[1].id
    assert dict(store.facet("cxr", "label")) == {"a": 20, "b": 20} and store.count("cxr") == 40
    store.close()
