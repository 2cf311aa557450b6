"""Reading docs/scaling.md and the store_scale.json runs it draws on, for tests/test_docs_figures.py."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "scaling.md"
RESULTS = REPO / "benchmarks" / "results"

# The store_scale.json runs the page draws on (it names each one next to its table).
HARD_1M = "20261202-114009-2165"
REAL_1M = "20261202-125345-7766"  # the second 1M real-like run, on a quieter machine
REAL_FIRST = "20261202-121420-4231"  # the first real-like run: 100k and a loaded 1M
REAL_NO_INDEX = "20261202-124803-6322"  # the engine's exact filtered search, no HNSW
HARD_100K = "20261202-074743-23844"
TINY_GRID = "20261202-092409-8479"  # m=16 vs m=32 on a trained vit-tiny
EFC_GRID = "20261202-071358-5848"  # ef_construct 100 vs 200
KINDS = ("none", "label", "selective")
ONE_M = "Results at 1M points (192-d, m=16, ef_construct=100, segments of at most 200k points)"


def _json(name: str) -> Any:
    return json.loads((RESULTS / name).read_text())


@cache
def _doc() -> str:
    return DOC.read_text()


def _plain(text: str) -> str:
    """The text as read: bold removed, line breaks and indents as single spaces."""
    return re.sub(r"\s+", " ", text.replace("**", ""))


def _section(heading: str) -> str:
    """The text under `heading` (a markdown heading line's text) up to the next heading of any level."""
    lines = _doc().splitlines()
    (start,) = [i for i, x in enumerate(lines) if x.lstrip("#").strip() == heading and x.startswith("#")]
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("#")), len(lines))
    return "\n".join(lines[start + 1 : end])


def _tables(text: str) -> list[list[list[str]]]:
    """Every markdown table in `text`: rows of cells (bold removed), without the header and separator rows."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] | None = None
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip().replace("**", "") for c in line.strip().strip("|").split("|")]
            if current is None:
                current = []
                tables.append(current)
                current.append(cells)  # header, dropped below
            elif not set("".join(cells)) <= set("-: "):
                current.append(cells)
        else:
            current = None
    return [t[1:] for t in tables]


def ms(x: float) -> str:
    """The page's rule for milliseconds: 2 decimals under 10, 1 from 10 up."""
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def cell(row: dict[str, float]) -> str:
    return f"{ms(row['p50_ms'])} / {ms(row['p95_ms'])} ({ms(row['cpu_p50_ms'])}), {row['recall']:.3f}"


def at(row: dict[str, float]) -> str:
    """A search row as the prose quotes it: p50 and recall."""
    return f"{ms(row['p50_ms'])} ms, {row['recall']:.3f}"


def span(values: list[float], fmt: str) -> str:
    lo, hi = format(min(values), fmt), format(max(values), fmt)
    return lo if lo == hi else f"{lo}-{hi}"


@cache
def _runs() -> dict[str, dict]:
    return {r["id"]: r for r in _json("store_scale.json")["runs"]}


def _result(run: str, data: str, points: int) -> dict:
    (r,) = [x for x in _runs()[run]["results"] if x["data"] == data and x["points"] == points]
    return r


def _config(run: str, data: str, points: int) -> dict:
    (c,) = [x for x in _result(run, data, points)["configs"] if x["m"] == 16 and x["ef_construct"] == 100]
    return c


def _search(run: str, data: str, points: int) -> dict[tuple[int, float, str], dict]:
    return {(x["ef"], x["acorn"], x["kind"]): x for x in _config(run, data, points)["search"]}


def _cites(*names: str) -> None:
    for name in names:
        assert f"benchmarks/results/{name}" in _doc(), name


POLICY_1M = "20261204-042926-25611"  # exact by the filter's kept points (issue 18): per label, with the estimate


def policy_figures() -> dict[str, str]:
    """The figures of "Exact by what the filter keeps", rebuilt from store_scale.json and
    exact_filter_quantization.json, by the placeholder names the page was written from."""
    res = _result(POLICY_1M, "real", 1_000_000)
    c = _config(POLICY_1M, "real", 1_000_000)
    exact, est = c["exact_filtered"], c["exact_filtered"]["matches_estimate"]
    by = _search(POLICY_1M, "real", 1_000_000)
    acorn = by[(256, 0.4, "label")]
    then = _result(REAL_1M, "real", 1_000_000)["numpy_exact"]["none"]["p50_ms"]
    now = res["numpy_exact"]["none"]["p50_ms"]
    loads = [x["load"] for x in c["search"]] + [exact[k]["load"] for k in ("label", "selective")]
    rows = []
    for label in ("normal", "pneumonia_bacterial", "pneumonia_viral", "covid19"):
        e = est[f"label={label}"]
        rows.append(
            f"| label={label} | {e['true']:,} ({e['estimate']:,}) | {ms(exact['label']['p50_ms_by_label'][label])},"
            f" {exact['label']['recall_by_label'][label]:.3f} | {ms(acorn['p50_ms_by_label'][label])},"
            f" {acorn['recall_by_label'][label]:.3f} |"
        )
    sel = est["selective"]
    sel_hnsw = by[(256, 0.4, "selective")]
    rows.append(
        f"| label and source (selective) | {sel['true']:,} ({sel['estimate']:,}) |"
        f" {ms(exact['selective']['p50_ms'])}, {exact['selective']['recall']:.3f} |"
        f" {ms(sel_hnsw['p50_ms'])}, {sel_hnsw['recall']:.3f} |"
    )
    (quant,) = _json("exact_filter_quantization.json")["runs"][-1:]
    q = {(r["mode"], r["kind"]): r for r in quant["rows"]}
    modes = list(dict.fromkeys(r["mode"] for r in quant["rows"]))
    ratios = [q[(m, k)]["p50_ms"] / q[("plain", k)]["p50_ms"] for m in modes if m != "plain" for k in KINDS[1:]]
    bact = exact["label"]["p50_ms_by_label"]["pneumonia_bacterial"]
    return {
        "RUN_ID": POLICY_1M,
        "LOADS": span(loads, ".1f"),
        "NUMPY_RATIO": f"{now / then:.1f}",
        "NUMPY_NOW": ms(now),
        "NUMPY_THEN": ms(then),
        "TABLE_ROWS": "\n".join(rows),
        "ESTIMATE_MS": span([e["p50_ms"] for e in est.values()], ".2f"),
        "SEL_EST": f"{sel['estimate']:,}",
        "SEL_TRUE": f"{sel['true']:,}",
        "SEL_RATIO": f"{sel['estimate'] / sel['true']:.2f}",
        "UNF_AT": at(by[(256, 0.0, "none")]),
        "LABEL_EXACT": ms(exact["label"]["p50_ms"]),
        "BACT_EXACT": ms(bact),
        "LABEL_HNSW": at(acorn),
        "BACT_HNSW": f"{acorn['recall_by_label']['pneumonia_bacterial']:.3f}",
        "SEL_EXACT": ms(exact["selective"]["p50_ms"]),
        "SEL_HNSW": ms(sel_hnsw["p50_ms"]),
        "QSEL_PLAIN": ms(q[("plain", "selective")]["p50_ms"]),
        "QLABEL_PLAIN": ms(q[("plain", "label")]["p50_ms"]),
        "QUANT_RANGE": f"{min(ratios):.2f}-{max(ratios):.2f}x",
        "QUANT_ROWS": "\n".join(
            f"| exact, {m} | {cell(q[(m, 'label')])} | {cell(q[(m, 'selective')])} |" for m in modes
        ),
        "BACT_POINTS": f"{est['label=pneumonia_bacterial']['true']:,}",
        "PER_POINT": f"{bact * 1e6 / est['label=pneumonia_bacterial']['true']:.0f}",
    }
