"""The figures of docs/scaling.md's "One graph per label" section, rebuilt from store_partitions.json (and, for the
single collection at 1M, the store_scale.json run of the section before it), for tests/test_docs_partitions.py."""

from __future__ import annotations

from functools import cache

from tests.scaling_doc import POLICY_1M, _config, _json, _search, at, ms, span

PARTITIONS_100K = "20261204-111728-32103"  # both layouts, real and hard data, 100k points
PARTITIONS_1M = "20261204-112236-32432"  # the partitioned layout, real-like data, 1M points
EF = 256  # the default search beam (CXR_SEARCH_HNSW_EF)
FILTERS = {"none": "none", "label": "label", "selective": "label and source"}


@cache
def partition_runs() -> dict[str, dict]:
    return {r["id"]: r for r in _json("store_partitions.json")["runs"]}


def _layout(run: str, data: str, points: int, layout: str) -> dict:
    (entry,) = [e for e in partition_runs()[run]["results"] if e["data"] == data and e["points"] == points]
    (found,) = [x for x in entry["layouts"] if x["layout"] == layout]
    return found


def _rows(run: str, data: str, points: int, layout: str) -> dict[str, dict]:
    return {r["kind"]: r for r in _layout(run, data, points, layout)["search"] if r["ef"] == EF}


def _single_1m() -> dict[str, dict]:
    """Today's single collection at 1M under the store's default policy, from store_scale.json: unfiltered
    through the graph at ef 256, filters exact (both keep under 500k points)."""
    exact = _config(POLICY_1M, "real", 1_000_000)["exact_filtered"]
    return {"none": _search(POLICY_1M, "real", 1_000_000)[(EF, 0.0, "none")]} | {
        k: exact[k] for k in ("label", "selective")
    }


def _cell(row: dict) -> str:
    low = row.get("recall_by_label")
    return at(row) + (f" (lowest label {min(low.values()):.3f})" if low else "")


def partition_figures() -> dict[str, str]:
    cases = [
        (
            "real, 100k",
            _rows(PARTITIONS_100K, "real", 100_000, "single"),
            _rows(PARTITIONS_100K, "real", 100_000, "partitioned"),
        ),
        (
            "hard, 100k",
            _rows(PARTITIONS_100K, "hard", 100_000, "single"),
            _rows(PARTITIONS_100K, "hard", 100_000, "partitioned"),
        ),
        ("real, 1M", _single_1m(), _rows(PARTITIONS_1M, "real", 1_000_000, "partitioned")),
    ]
    table = [
        f"| {case} | {FILTERS[kind]} | {_cell(single[kind])} | {_cell(parts[kind])} |"
        for case, single, parts in cases
        for kind in FILTERS
    ]
    one_m = cases[2][2]
    builds = {
        (data, layout): _layout(PARTITIONS_100K, data, 100_000, layout)["build"]
        for data in ("real", "hard")
        for layout in ("single", "partitioned")
    }
    big = _layout(PARTITIONS_1M, "real", 1_000_000, "partitioned")["build"]
    by_ef = {
        r["ef"]: r for r in _layout(PARTITIONS_1M, "real", 1_000_000, "partitioned")["search"] if r["kind"] == "none"
    }
    loads = [r["load"] for r in _layout(PARTITIONS_1M, "real", 1_000_000, "partitioned")["search"]]
    return {
        "TABLE_ROWS": "\n".join(table),
        "LOADS_1M": span(loads, ".1f"),
        "LABEL_1M": at(one_m["label"]),
        "SEL_1M": at(one_m["selective"]),
        "NONE_1M": at(one_m["none"]),
        "NONE_1M_EF64": at(by_ef[64]),
        "REFRESH_100K_SINGLE": span([builds[(d, "single")]["refresh_total_s"] for d in ("real", "hard")], ".0f"),
        "REFRESH_100K_PARTS": span([builds[(d, "partitioned")]["refresh_total_s"] for d in ("real", "hard")], ".0f"),
        "REFRESH_1M_TOTAL": f"{big['refresh_total_s']:,.0f}",
        "REFRESH_1M_MAX": f"{big['refresh_max_s']:.1f}",
        "DISK_100K_SINGLE": f"{builds[('real', 'single')]['disk_mb']:,.0f}",
        "DISK_100K_PARTS": f"{builds[('real', 'partitioned')]['disk_mb']:,.0f}",
        "DISK_1M_PARTS": f"{big['disk_mb']:,.0f}",
        "UPSERT_100K_SINGLE": f"{builds[('real', 'single')]['upsert_pts_per_s']:,.0f}",
        "UPSERT_100K_PARTS": f"{builds[('real', 'partitioned')]['upsert_pts_per_s']:,.0f}",
        "SINGLE_NONE_1M": ms(cases[2][1]["none"]["p50_ms"]),
        "SINGLE_LABEL_1M": ms(cases[2][1]["label"]["p50_ms"]),
        "NONE_VERDICT": "met" if one_m["none"]["p50_ms"] <= 10 and one_m["none"]["recall"] >= 0.99 else "not met",
        "RUN_100K": PARTITIONS_100K,
        "RUN_1M": PARTITIONS_1M,
        "POLICY_1M": POLICY_1M,
    }
