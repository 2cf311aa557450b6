"""The markdown tables benchmarks/store_scale.py prints: the build, and the searches against numpy exact."""

from __future__ import annotations

from typing import Any

KINDS = ("none", "label", "selective")


def print_tables(results: list[dict[str, Any]]) -> None:
    """Two markdown tables: the build (wall and CPU seconds) and the searches (wall p50/p95, CPU p50, recall)."""
    print(
        "\n| data | points | m | ef_c | upsert pts/s (per CPU-s) | refreshes | refresh median / max s (CPU) | "
        "all refreshes s (CPU) | full build s (CPU) | segments | serve RSS MB | disk MB | open s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for c in r["configs"]:
            b, s = c["build"], c["serve"]
            if "refreshes" not in b:  # --no-index
                continue
            full = f"{c['full_build_s']:.0f} ({c['full_build_cpu_s']:.0f})" if "full_build_s" in c else "-"
            print(
                f"| {r['data']} | {r['points']:,} | {c['m']} | {c['ef_construct']} | "
                f"{b['upsert_pts_per_s']:,.0f} ({b['upsert_pts_per_cpu_s']:,.0f}) | {b['refreshes']} | "
                f"{b['refresh_median_s']:.1f} / {b['refresh_max_s']:.1f} "
                f"({b['refresh_cpu_median_s']:.1f} / {b['refresh_cpu_max_s']:.1f}) | "
                f"{b['refresh_total_s']:.0f} ({b['refresh_cpu_total_s']:.0f}) | {full} | {b['segments']} | "
                f"{s['rss_mb']:.0f} | {s['disk_mb']:.0f} | {s['open_s']:.2f} |"
            )
    print("\n| data | points | search | ef | ACORN | none: p50 / p95 ms (CPU p50), recall@10 | label | selective |")
    print("|---|---|---|---|---|---|---|---|")

    def cell(row: dict[str, float]) -> str:
        return f"{row['p50_ms']:.2f} / {row['p95_ms']:.2f} ({row['cpu_p50_ms']:.2f}), {row['recall']:.3f}"

    for r in results:
        ex = r["numpy_exact"]
        print(
            f"| {r['data']} | {r['points']:,} | numpy exact | - | - | " + " | ".join(cell(ex[k]) for k in KINDS) + " |"
        )
        for c in r["configs"]:
            if "exact_filtered" in c:
                ex_f = c["exact_filtered"]
                print(
                    f"| {r['data']} | {r['points']:,} | engine, exact filtered | - | - | - | "
                    f"{cell(ex_f['label'])} | {cell(ex_f['selective'])} |"
                )
            by = {(x["ef"], x["acorn"], x["kind"]): x for x in c["search"]}
            unfiltered = {ef: x for (ef, _, kind), x in by.items() if kind == "none"}
            for ef, acorn in sorted({(x["ef"], x["acorn"]) for x in c["search"]}):
                cells = [cell(unfiltered[ef]), cell(by[(ef, acorn, "label")]), cell(by[(ef, acorn, "selective")])]
                print(
                    f"| {r['data']} | {r['points']:,} | m={c['m']} ef_c={c['ef_construct']} | {ef} | {acorn} | "
                    + " | ".join(cells)
                    + " |"
                )
