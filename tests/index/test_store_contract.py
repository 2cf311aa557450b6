"""One contract, every adapter: the embedded store, qdrant-client's :memory: mode and (when set) a real server."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from services.errors import CollectionNotFoundError, StoreError
from services.index import Hit, PointRecord, SearchFilter
from tests.index.conftest import Clustered, StoreCase, assert_like_exact, clustered, exact_top_k, held_out

DIM = 32


def _payload(data: Clustered, i: int) -> dict[str, object]:
    return {
        "label": f"c{data.cluster[i]}",
        "view": "PA" if i % 2 else "AP",
        "age": 20 + i % 60,
        "patient_hash": f"p{i % 40:02d}",
        "source_uri": f"file:///img/{i}.png",
    }


def _fill(case: StoreCase, data: Clustered, name: str | None = None) -> str:
    name = name or case.name()
    case.store.create_collection(name, data.vectors.shape[1])
    points = [PointRecord(pid, data.vectors[i], _payload(data, i)) for i, pid in enumerate(data.ids)]
    for start in range(0, len(points), 500):
        case.store.upsert(name, points[start : start + 500])
    return name


@pytest.fixture()
def data() -> Clustered:
    return clustered(n=400, dim=DIM)


def test_create_has_list_delete(store_case: StoreCase) -> None:
    store, a, b = store_case.store, store_case.name("a"), store_case.name("b")
    assert not store.has_collection(a)
    store.create_collection(a, DIM)
    store.create_collection(b, 8)
    assert store.has_collection(a) and store.has_collection(b)
    mine = {c.name: c for c in store.collections() if c.name.startswith(store_case.prefix)}
    assert set(mine) == {a, b}
    assert (mine[a].dim, mine[a].count, mine[b].dim) == (DIM, 0, 8)
    store.delete_collection(a)
    assert not store.has_collection(a) and store.has_collection(b)
    with pytest.raises(CollectionNotFoundError):
        store.delete_collection(a)


def test_create_is_idempotent_and_rejects_another_dim(store_case: StoreCase) -> None:
    store, name = store_case.store, store_case.name()
    store.create_collection(name, DIM)
    store.upsert(name, [PointRecord(str(uuid.uuid4()), np.ones(DIM, np.float32), {})])
    store.create_collection(name, DIM)
    assert store.count(name) == 1
    with pytest.raises(StoreError, match=f"{DIM}-d vectors, not 16-d"):
        store.create_collection(name, 16)


@pytest.mark.parametrize("bad", ["", "a/b", "..", "x" * 65, "name with space", "caf\u00e9"])
def test_collection_names_are_restricted(store_case: StoreCase, bad: str) -> None:
    with pytest.raises(StoreError, match="invalid collection name"):
        store_case.store.create_collection(bad, DIM)


def test_upsert_count_and_reupsert_does_not_duplicate(store_case: StoreCase, data: Clustered) -> None:
    store = store_case.store
    name = _fill(store_case, data)
    assert store.count(name) == len(data.ids)
    moved = data.vectors[1]
    store.upsert(name, [PointRecord(data.ids[0], moved, {"label": "relabelled"})])
    assert store.count(name) == len(data.ids)
    (rec,) = store.retrieve(name, [data.ids[0]], with_vectors=True)
    assert rec.payload == {"label": "relabelled"}
    assert rec.vector is not None and np.allclose(rec.vector, moved, atol=1e-5)
    store.upsert(name, [])
    assert store.count(name) == len(data.ids)


def test_existing_ids(store_case: StoreCase, data: Clustered) -> None:
    name = _fill(store_case, data)
    unknown = [str(uuid.uuid4()) for _ in range(3)]
    asked = data.ids[:5] + unknown + [data.ids[7].upper()]
    assert store_case.store.existing_ids(name, asked) == set(data.ids[:5]) | {data.ids[7].upper()}
    assert store_case.store.existing_ids(name, []) == set()


def test_delete_points_and_filtered_scroll(store_case: StoreCase, data: Clustered) -> None:
    store = store_case.store
    name = _fill(store_case, data)
    patient = {data.ids[i] for i in range(len(data.ids)) if i % 40 == 3}
    flt = SearchFilter(must={"patient_hash": "p03"})
    assert {r.id for r in store.scroll(name, batch=3, flt=flt)} == patient
    gone = sorted(patient)[:4]
    store.delete_points(name, [*gone, str(uuid.uuid4())])  # an unknown id is ignored
    store.delete_points(name, [])
    assert store.count(name) == len(data.ids) - 4
    assert store.existing_ids(name, gone) == set()
    assert {r.id for r in store.scroll(name, flt=flt)} == patient - set(gone)
    assert [h.id for h in store.search(name, data.vectors[data.ids.index(gone[0])], 5) if h.id in gone] == []


def test_search_nearest_first_with_cosine_scores(store_case: StoreCase, data: Clustered) -> None:
    name = _fill(store_case, data)
    queries = data.centres[:3] + 0.05
    want_idx, want_scores = exact_top_k(data.vectors, queries, 10)
    for q, idx, scores, centre in zip(queries, want_idx, want_scores, range(3), strict=True):
        hits = store_case.store.search(name, q, 10)
        assert [h.id for h in hits] == [data.ids[i] for i in idx]
        assert np.allclose([h.score for h in hits], scores, atol=1e-4)
        assert all(isinstance(h, Hit) and isinstance(h.id, str) for h in hits)
        assert {h.payload["label"] for h in hits} == {f"c{centre}"}
    own = store_case.store.search(name, data.vectors[5] * 3.0, 1)[0]  # scale does not matter to cosine
    assert own.id == data.ids[5] and own.score == pytest.approx(1.0, abs=1e-4)


def test_filter_must_single_and_any_of(store_case: StoreCase, data: Clustered) -> None:
    store, name = store_case.store, _fill(store_case, data)
    query = data.centres[0]
    hits = store.search(name, query, 20, SearchFilter(must={"label": ["c3"]}))
    assert len(hits) == 20 and {h.payload["label"] for h in hits} == {"c3"}
    hits = store.search(name, query, 50, SearchFilter(must={"label": ["c3", "c5"], "view": "PA"}))
    assert {h.payload["label"] for h in hits} == {"c3", "c5"}
    assert {h.payload["view"] for h in hits} == {"PA"}
    assert store.search(name, query, 5, SearchFilter(must={"label": ["nothing-like-this"]})) == []


def test_filter_must_not_patient_and_exclude_ids(store_case: StoreCase, data: Clustered) -> None:
    store, name = store_case.store, _fill(store_case, data)
    query_index = 11
    query, query_id = data.vectors[query_index], data.ids[query_index]
    patient = _payload(data, query_index)["patient_hash"]
    assert store.search(name, query, 1)[0].id == query_id
    hits = store.search(name, query, 30, SearchFilter(must_not={"patient_hash": [patient]}))
    assert len(hits) == 30 and patient not in {h.payload["patient_hash"] for h in hits}
    hits = store.search(name, query, 30, SearchFilter(exclude_ids=[query_id]))
    assert len(hits) == 30 and query_id not in {h.id for h in hits}
    unfiltered = store.search(name, query, 31)
    assert [h.id for h in hits] == [h.id for h in unfiltered if h.id != query_id][:30]


def test_integer_field_filter(store_case: StoreCase, data: Clustered) -> None:
    store, name = store_case.store, _fill(store_case, data)
    hits = store.search(name, data.centres[1], 100, SearchFilter(must={"age": [25, 26]}))
    assert hits and {h.payload["age"] for h in hits} <= {25, 26}
    expected = sum(1 for i in range(len(data.ids)) if _payload(data, i)["age"] in (25, 26))
    assert len(hits) == min(100, expected)
    as_text = store.search(name, data.centres[1], 100, SearchFilter(must={"age": ["25", "26"]}))
    assert [h.id for h in as_text] == [h.id for h in hits]
    hits = store.search(name, data.centres[1], 50, SearchFilter(must_not={"age": list(range(20, 79))}))
    assert hits and {h.payload["age"] for h in hits} == {79}


def test_search_batch_equals_single_searches(store_case: StoreCase, data: Clustered) -> None:
    store, name = store_case.store, _fill(store_case, data)
    queries = data.vectors[[3, 50, 120, 300]]
    filters = [None, SearchFilter(must={"label": ["c2"]}), SearchFilter(exclude_ids=[data.ids[120]]), None]
    batch = store.search_batch(name, queries, 7, filters)
    singles = [store.search(name, q, 7, f) for q, f in zip(queries, filters, strict=True)]
    assert [[h.id for h in hits] for hits in batch] == [[h.id for h in hits] for hits in singles]
    for got, want in zip(batch, singles, strict=True):
        assert np.allclose([h.score for h in got], [h.score for h in want], atol=1e-5)
    unfiltered = store.search_batch(name, queries, 7)
    assert [hits[0].id for hits in unfiltered] == [data.ids[i] for i in (3, 50, 120, 300)]
    assert store.search_batch(name, np.empty((0, DIM), np.float32), 7) == []
    with pytest.raises(StoreError, match="4 vectors but 1 filters"):
        store.search_batch(name, queries, 7, [None])


def test_retrieve_with_and_without_vectors(store_case: StoreCase, data: Clustered) -> None:
    store, name = store_case.store, _fill(store_case, data)
    wanted = [data.ids[9], str(uuid.uuid4()), data.ids[2]]
    recs = store.retrieve(name, wanted, with_vectors=True)
    assert [r.id for r in recs] == [data.ids[9], data.ids[2]]
    for rec, i in zip(recs, (9, 2), strict=True):
        assert rec.payload == _payload(data, i)
        assert rec.vector is not None and rec.vector.dtype == np.float32
        assert np.allclose(rec.vector, data.vectors[i], atol=1e-5)  # inputs are unit vectors
    assert all(r.vector is None for r in store.retrieve(name, wanted))


def test_scroll_yields_every_point(store_case: StoreCase, data: Clustered) -> None:
    store, name = store_case.store, _fill(store_case, data)
    seen = list(store.scroll(name, batch=64))
    assert sorted(r.id for r in seen) == sorted(data.ids)
    assert all(r.vector is None and "label" in r.payload for r in seen)
    with_vectors = {r.id: r.vector for r in store.scroll(name, batch=1000, with_vectors=True)}
    assert np.allclose(with_vectors[data.ids[4]], data.vectors[4], atol=1e-5)


def test_persists_across_close_and_reopen(store_case: StoreCase, data: Clustered) -> None:
    if not store_case.persistent:
        pytest.skip(f"the {store_case.kind} store keeps nothing after close")
    name = _fill(store_case, data)
    before = [h.id for h in store_case.store.search(name, data.centres[2], 10)]
    store = store_case.reopen()
    assert store.has_collection(name) and store.count(name) == len(data.ids)
    assert [h.id for h in store.search(name, data.centres[2], 10)] == before
    store.create_collection(name, DIM)  # still idempotent after reopening
    assert store.count(name) == len(data.ids)


def test_optimize_keeps_results(store_case: StoreCase) -> None:
    big = clustered(n=2000, dim=DIM, clusters=20, seed=1)
    store, name = store_case.store, _fill(store_case, big)
    queries = held_out(big, 50, noise=0.25, seed=2)  # not in the index: no query finds itself
    before = store.search_batch(name, queries, 10)
    store.optimize(name)
    assert store.count(name) == len(big.ids)
    after = store.search_batch(name, queries, 10)
    tuned = [store.search(name, q, 10, hnsw_ef=128) for q in queries]
    for hits in (before, after, tuned):
        assert assert_like_exact(hits, big.vectors, big.ids, queries, 10) >= 0.95


def test_unindexed_count_is_bounded_by_the_count(store_case: StoreCase, data: Clustered) -> None:
    store, name = store_case.store, store_case.name()
    store.create_collection(name, DIM)
    assert store.unindexed_count(name) == 0
    _fill(store_case, data, name)
    assert 0 <= store.unindexed_count(name) <= store.count(name) == len(data.ids)
    store.optimize(name)
    assert 0 <= store.unindexed_count(name) <= store.count(name)


def test_wrong_dim_and_bad_vectors(store_case: StoreCase) -> None:
    store, name = store_case.store, store_case.name()
    store.create_collection(name, DIM)
    pid = str(uuid.uuid4())
    with pytest.raises(StoreError, match=rf"{DIM}-d vectors, got shape \(16,\)"):
        store.upsert(name, [PointRecord(pid, np.ones(16, np.float32), {})])
    with pytest.raises(StoreError, match=f"{DIM}-d vectors, got 16-d"):
        store.search(name, np.ones(16, np.float32), 3)
    with pytest.raises(StoreError, match=f"{DIM}-d vectors, got 16-d"):
        store.search_batch(name, np.ones((2, 16), np.float32), 3)
    bad = np.ones(DIM, np.float32)
    bad[3] = np.nan
    with pytest.raises(StoreError, match="NaN or infinity"):
        store.upsert(name, [PointRecord(pid, bad, {})])
    with pytest.raises(StoreError, match="NaN or infinity"):
        store.search(name, np.full(DIM, np.inf, np.float32), 3)
    with pytest.raises(StoreError, match="all zeros"):
        store.upsert(name, [PointRecord(pid, np.zeros(DIM, np.float32), {})])
    with pytest.raises(StoreError, match="no vector"):
        store.upsert(name, [PointRecord(pid, None, {})])
    with pytest.raises(StoreError, match="not a UUID"):
        store.upsert(name, [PointRecord("image-7", np.ones(DIM, np.float32), {})])
    with pytest.raises(StoreError, match="at least one"):
        store.search(name, np.ones(DIM, np.float32), 0)
    assert store.count(name) == 0


def test_unknown_collection(store_case: StoreCase) -> None:
    store, name = store_case.store, store_case.name("missing")
    vec = np.ones(DIM, np.float32)
    calls = [
        lambda: store.count(name),
        lambda: store.search(name, vec, 3),
        lambda: store.search_batch(name, vec[None], 3),
        lambda: store.upsert(name, [PointRecord(str(uuid.uuid4()), vec, {})]),
        lambda: store.retrieve(name, [str(uuid.uuid4())]),
        lambda: store.existing_ids(name, [str(uuid.uuid4())]),
        lambda: store.scroll(name),
        lambda: store.optimize(name),
        lambda: store.unindexed_count(name),
        lambda: store.delete_collection(name),
    ]
    for call in calls:
        with pytest.raises(CollectionNotFoundError, match=name):
            call()


# -- grouping and recommend: one contract, checked against naive twins on exact scores


def _fill_grouped(case: StoreCase, data: Clustered) -> str:
    """Like _fill, but every 25th point has no patient_hash (a PNG without a patient id): a group of its own."""
    name = case.name("g")
    case.store.create_collection(name, data.vectors.shape[1])
    points = []
    for i, pid in enumerate(data.ids):
        payload = _payload(data, i)
        if i % 25 == 0:
            del payload["patient_hash"]
        points.append(PointRecord(pid, data.vectors[i], payload))
    case.store.upsert(name, points)
    return name


def _naive_groups(data: Clustered, query: np.ndarray, k: int, keep=lambda i: True) -> list[str]:
    scores = data.vectors @ (query / np.linalg.norm(query))
    out, seen = [], set()
    for i in np.argsort(-scores, kind="stable"):
        if not keep(i):
            continue
        group = None if i % 25 == 0 else _payload(data, i)["patient_hash"]
        if group is not None and group in seen:
            continue
        seen.add(group) if group is not None else None
        out.append(data.ids[i])
    return out[:k]


def test_search_groups_one_hit_per_patient_and_full_pages(store_case: StoreCase, data: Clustered) -> None:
    store, name = store_case.store, _fill_grouped(store_case, data)
    query = data.vectors[7]
    for k in (10, 45):
        hits = store.search_groups(name, query, k)
        assert [h.id for h in hits] == _naive_groups(data, query, k)
        hashes = [h.payload["patient_hash"] for h in hits if "patient_hash" in h.payload]
        assert len(hits) == k and len(hashes) == len(set(hashes))
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        assert np.allclose(scores, [float(data.vectors[data.ids.index(h.id)] @ query) for h in hits], atol=1e-4)
    every = store.search_groups(name, query, 500)  # 40 patients + 16 points without one
    assert len(every) == 40 + 16
    flt = SearchFilter(must={"label": ["c3"]}, must_not={"patient_hash": ["p03"]})
    hits = store.search_groups(name, query, 12, flt)
    keep = lambda i: data.cluster[i] == 3 and (i % 25 == 0 or _payload(data, i)["patient_hash"] != "p03")  # noqa: E731
    assert [h.id for h in hits] == _naive_groups(data, query, 12, keep)
    with pytest.raises(StoreError, match="cannot group by 'colour'"):
        store.search_groups(name, query, 5, group_by="colour")


def _naive_recommend(data: Clustered, pos: list[int], neg: list[int], k: int) -> tuple[list[str], np.ndarray]:
    """Qdrant's best-score strategy: a candidate whose best positive cosine beats its best negative one ranks by
    the former (scaled by a fast sigmoid), every other candidate after them by the latter, ascending."""
    best_pos = (data.vectors @ data.vectors[pos].T).max(axis=1)
    best_neg = (data.vectors @ data.vectors[neg].T).max(axis=1) if neg else np.full(len(data.ids), -2.0)
    sigmoid = lambda x: 0.5 + 0.5 * x / (1 + np.abs(x))  # noqa: E731
    score = np.where(best_pos > best_neg, sigmoid(best_pos), -sigmoid(best_neg))
    order = [i for i in np.argsort(-score, kind="stable") if i not in pos + neg][:k]
    return [data.ids[i] for i in order], score[order]


def test_recommend_moves_towards_positives_and_away_from_negatives(store_case: StoreCase, data: Clustered) -> None:
    store, name = store_case.store, _fill(store_case, data)
    pos, neg = [3, 17], [40]
    want_ids, want_scores = _naive_recommend(data, pos, [], 10)
    hits = store.recommend(name, [data.ids[i] for i in pos], k=10)
    assert [h.id for h in hits] == want_ids
    assert np.allclose([h.score for h in hits], want_scores, atol=1e-4)
    want_ids, want_scores = _naive_recommend(data, pos, neg, 15)
    hits = store.recommend(name, [data.ids[i] for i in pos], [data.ids[i] for i in neg], k=15)
    assert [h.id for h in hits] == want_ids
    assert np.allclose([h.score for h in hits], want_scores, atol=1e-4)
    examples = {data.ids[i] for i in pos + neg}
    assert not examples & {h.id for h in hits}
    filtered = store.recommend(name, [data.ids[3]], k=8, flt=SearchFilter(must={"view": ["AP"]}))
    assert len(filtered) == 8 and {h.payload["view"] for h in filtered} == {"AP"}
    grouped = store.recommend(name, [data.ids[i] for i in pos], k=12, group_by="patient_hash")
    patients = [h.payload["patient_hash"] for h in grouped]
    assert len(grouped) == 12 and len(set(patients)) == 12
    assert grouped[0].id == want_ids[0]


def test_recommend_refuses_bad_examples(store_case: StoreCase, data: Clustered) -> None:
    from services.errors import PointNotFoundError

    store, name = store_case.store, _fill(store_case, data)
    unknown = str(uuid.uuid4())
    with pytest.raises(PointNotFoundError, match=unknown):
        store.recommend(name, [data.ids[0], unknown])
    with pytest.raises(StoreError, match="at least one positive"):
        store.recommend(name, [], [data.ids[1]])
    with pytest.raises(StoreError, match="both positive and negative"):
        store.recommend(name, [data.ids[1]], [data.ids[1]])
    with pytest.raises(StoreError, match="not a UUID"):
        store.recommend(name, ["../../etc/passwd"])


def test_facet_counts_each_value_from_the_index(store_case: StoreCase, data: Clustered) -> None:
    store = store_case.store
    name = _fill(store_case, data)
    labels = store.facet(name, "label")
    by_scan: dict[str, int] = {}
    for rec in store.scroll(name):
        by_scan[rec.payload["label"]] = by_scan.get(rec.payload["label"], 0) + 1
    assert dict(labels) == by_scan and [c for _, c in labels] == sorted(by_scan.values(), reverse=True)
    assert dict(store.facet(name, "view")) == {"PA": len(data.ids) // 2, "AP": len(data.ids) - len(data.ids) // 2}
    assert sum(c for _, c in store.facet(name, "age", limit=100)) == len(data.ids)  # every point has an age
    assert store.facet(name, "sex") == []  # no point carries it
    with pytest.raises(StoreError, match="not an indexed payload field"):
        store.facet(name, "source_uri")
