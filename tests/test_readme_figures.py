"""Figures in the README come from committed benchmark JSON: each row checked here is rebuilt from its file."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _row(script: str) -> str:
    readme = (REPO / "README.md").read_text()
    (line,) = [x for x in readme.splitlines() if x.startswith(f"| `{script}` |")]
    return line


def test_the_audit_cost_row_matches_its_json() -> None:
    data = json.loads((REPO / "benchmarks" / "results" / "audit_cost.json").read_text())
    row = _row("benchmarks/audit_cost.py")
    on, off = data["cases"]["on"], data["cases"]["off"]
    for figure in (
        f"{data['indexed']:,} cxr-public images",
        f"{on['n']} searches each",
        f"p50 {on['p50_ms']} ms on vs {off['p50_ms']} ms off (x{data['p50_ratio_on_over_off']})",
        f"p95 {on['p95_ms']} vs {off['p95_ms']} ms (x{data['p95_ratio_on_over_off']})",
        f"one record {data['one_record_ms']} ms",
    ):
        assert figure in row, figure
    assert data["met"] == (data["p50_ratio_on_over_off"] <= 1.05) and "met, narrowly" in row
