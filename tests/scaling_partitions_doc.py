"""The figures of docs/scaling.md's "One graph per label" section, rebuilt from store_partitions.json (and, for the
single collection at 1M, the store_scale.json run of the section before it), for tests/test_docs_partitions.py."""

from __future__ import annotations

from functools import cache

from tests.scaling_doc import HARD_1M, POLICY_1M, _config, _json, _search, at, ms, span

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


STORE_100K = "20261204-174202-19830"  # the store's own layout as it stands (label_parts 8, from 20k points), hard, 100k
STORE_1M = "20261204-163254-24765"  # the store's own layout, hard data, 1M points (parts from the first point)


def _store_rows(run: str, points: int, layout: str) -> dict[str, dict]:
    return {r["kind"]: r for r in _layout(run, "hard", points, layout)["search"] if r["ef"] == EF}


def _hard_single_1m() -> dict[str, dict]:
    """One graph at 1M on the hard data (store_scale.json, 2 December): unfiltered at ef 256, filters with ACORN."""
    by = _search(HARD_1M, "hard", 1_000_000)
    return {"none": by[(EF, 0.0, "none")], "label": by[(EF, 0.4, "label")], "selective": by[(EF, 0.4, "selective")]}


def _build_row(case: str, layout: str, b: dict) -> str:
    opened = b.get("open_and_first_search_s")  # not recorded in run STORE_1M
    return (
        f"| {case} | {layout} | {b['upsert_pts_per_s']:,.0f} | {b['refreshes']} | {b['refresh_total_s']:,.0f} | "
        f"{b['refresh_max_s']:.1f} | {b['unindexed_at_end']:,} | {b['parts']} | {b['disk_used_mb']:,.0f} | "
        f"{'-' if opened is None else f'{opened:.2f}'} |"
    )


def store_layout_figures() -> dict[str, str]:
    """The figures of the section's "The store's own layout" part, from store_partitions.json (and, for one graph
    at 1M, store_scale.json's hard run)."""
    cases = [
        ("hard, 100k", _store_rows(STORE_100K, 100_000, "single"), _store_rows(STORE_100K, 100_000, "by-label")),
        ("hard, 1M", _hard_single_1m(), _store_rows(STORE_1M, 1_000_000, "by-label")),
    ]
    table = [
        f"| {case} | {FILTERS[kind]} | {_cell(single[kind])} | {_cell(parts[kind])} |"
        for case, single, parts in cases
        for kind in FILTERS
    ]
    small = {lay: _layout(STORE_100K, "hard", 100_000, lay)["build"] for lay in ("single", "by-label")}
    big = _layout(STORE_1M, "hard", 1_000_000, "by-label")["build"]
    builds = [
        _build_row("hard, 100k", "one graph", small["single"]),
        _build_row("hard, 100k", "one graph per label", small["by-label"]),
        _build_row("hard, 1M", "one graph per label", big),
    ]
    one_m = cases[1][2]
    loads = [r["load"] for r in _layout(STORE_1M, "hard", 1_000_000, "by-label")["search"]]
    loads += [r["load"] for lay in ("single", "by-label") for r in _layout(STORE_100K, "hard", 100_000, lay)["search"]]

    def verdict(row: dict) -> str:
        return "met" if row["p50_ms"] <= 10 and row["recall"] >= 0.99 else "not met"

    return {
        "STORE_TABLE_ROWS": "\n".join(table),
        "STORE_BUILD_ROWS": "\n".join(builds),
        "STORE_LOADS": span(loads, ".1f"),
        "STORE_NONE_1M": at(one_m["none"]),
        "STORE_LABEL_1M": at(one_m["label"]),
        "STORE_SEL_1M": at(one_m["selective"]),
        "STORE_NONE_VERDICT": verdict(one_m["none"]),
        "STORE_LABEL_VERDICT": verdict(one_m["label"]),
        "STORE_SEL_VERDICT": verdict(one_m["selective"]),
        "STORE_NONE_100K_RATIO": f"{cases[0][2]['none']['p50_ms'] / cases[0][1]['none']['p50_ms']:.1f}",
        "STORE_UPSERT_RATIO": f"{small['by-label']['upsert_pts_per_s'] / small['single']['upsert_pts_per_s']:.2f}",
        "STORE_100K": STORE_100K,
        "STORE_1M": STORE_1M,
        "HARD_1M": HARD_1M,
    }
