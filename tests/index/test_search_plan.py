"""IndexTuning.search_plan decides how a search runs; each adapter only translates that plan, and its filters,
into its own engine's look-alike models (services.index.translate)."""

from __future__ import annotations

import uuid

import qdrant_edge as qe
from qdrant_client import models as qm

from services.index import IndexTuning, QdrantServerStore, SearchFilter
from services.index.edge import _edge_filter
from services.index.server import _server_filter
from services.index.translate import engine_search_params
from services.index.tuning import SearchPlan

LABEL = SearchFilter(must={"label": "covid"})


def test_the_tuning_chooses_exact_beam_and_acorn() -> None:
    tuning = IndexTuning(search_hnsw_ef=64, acorn_max_selectivity=0.3, exact_filter_max_points=1000)
    assert tuning.search_plan(None, None) == SearchPlan(hnsw_ef=64)
    assert tuning.search_plan(None, None, hnsw_ef=128) == SearchPlan(hnsw_ef=128)  # the caller's beam wins
    assert tuning.search_plan(LABEL, 1000) == SearchPlan(exact=True)
    assert tuning.search_plan(LABEL, 1001) == SearchPlan(hnsw_ef=64, acorn_max_selectivity=0.3)
    excluding = SearchFilter(exclude_ids=[str(uuid.uuid4())])  # keeps nearly every point: never exact
    assert tuning.search_plan(excluding, 10) == SearchPlan(hnsw_ef=64, acorn_max_selectivity=0.3)
    assert tuning.search_plan(SearchFilter(), 10) == SearchPlan(hnsw_ef=64)  # an empty filter: no ACORN
    assert IndexTuning().search_plan(LABEL, 10) is None  # nothing set: the engine's defaults


def test_both_engines_get_the_same_parameters() -> None:
    plan = SearchPlan(hnsw_ef=64, acorn_max_selectivity=0.3)
    edge = engine_search_params(plan, qe)
    assert (edge.hnsw_ef, edge.exact, edge.acorn.enable, edge.acorn.max_selectivity) == (64, False, True, 0.3)
    acorn = qm.AcornSearchParams(enable=True, max_selectivity=0.3)
    assert engine_search_params(plan, qm) == qm.SearchParams(hnsw_ef=64, acorn=acorn)
    assert engine_search_params(SearchPlan(hnsw_ef=32), qm) == qm.SearchParams(hnsw_ef=32)
    assert engine_search_params(SearchPlan(exact=True), qm) == qm.SearchParams(exact=True)
    assert engine_search_params(SearchPlan(exact=True), qe).exact
    assert engine_search_params(None, qe) is None and engine_search_params(None, qm) is None


def test_the_server_store_asks_the_tuning_except_in_local_mode() -> None:
    remote = QdrantServerStore("http://127.0.0.1:9", tuning=IndexTuning(search_hnsw_ef=32))  # never contacted
    assert remote._search_params("cxr", LABEL, _server_filter(LABEL), None) == qm.SearchParams(hnsw_ef=32)
    remote.close()
    local = QdrantServerStore(location=":memory:", tuning=IndexTuning(search_hnsw_ef=32))
    # exact search only; it warns about parameters
    assert local._search_params("cxr", LABEL, _server_filter(LABEL), None) is None
    local.close()


def test_filters_translate_alike_for_both_engines() -> None:
    pid = str(uuid.uuid4())
    flt = SearchFilter(must={"label": ["covid", "normal"]}, must_not={"view": "PA"}, exclude_ids=[pid])
    assert _server_filter(flt) == qm.Filter(
        must=[qm.FieldCondition(key="label", match=qm.MatchAny(any=["covid", "normal"]))],
        must_not=[qm.FieldCondition(key="view", match=qm.MatchValue(value="PA")), qm.HasIdCondition(has_id=[pid])],
    )
    edge = _edge_filter(flt)
    assert repr(edge).count("MatchAny") == 1 and repr(edge).count("MatchValue") == 1 and pid in repr(edge)
    assert edge.should is None and len(edge.must) == 1 and len(edge.must_not) == 2
    assert _edge_filter(None) is None and _server_filter(SearchFilter()) is None
