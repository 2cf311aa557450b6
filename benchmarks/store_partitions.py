"""One graph per label (the embedded store's layout for new collections, IndexTuning.label_parts) against one graph
for every label, in one run, on benchmarks/store_scale.py's data (`real`, `hard`) and its writer loop.

- single: one graph (label_parts 0, the layout of collections made before issue 18).
- by-label: the store's own layout, label_parts 8: each label's points in a graph of their own, once the shared
  graph holds --parts-from points (runs 20261204-163254-24765 and 20261204-171200-30038 predate that step: parts
  from the first point). A label filter is an unfiltered search of that label's graph (and an exact one of the
  shared graph); the selective filter (label AND source) searches the label's graph with the source filter, under
  the default policy; an unfiltered search visits every graph and merges by score.
- partitioned (the JSON's runs 20261204-111728-32103 and 20261204-112236-32432, before the store had the layout):
  the same idea emulated by this script with one collection per label and the four rare labels in one more.

Both current layouts go through the same adapter calls, with the store's defaults (ef 256, ACORN 0.4, filters
keeping at most 500k points exact). Each row: p50/p95 wall and CPU ms and recall@10 against numpy's exact answer,
per label for the label filter. Build: store_scale's writer loop (optimize() whenever the part that has most holds
`threshold` unindexed points), then one last optimize, the store's size on disk, and the time a reopened store
takes to answer its first unfiltered search (opening every part).

    python -m benchmarks.store_partitions --data hard --sizes 1000000 --layouts by-label

Prints a table and adds the run to benchmarks/results/store_partitions.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.store_scale import DataSet, K, add_data_arguments, build, disk_mb, latency, say, timed
from benchmarks.store_scale_data import LABELS, embed_public
from services.index import Hit, IndexTuning, QdrantEdgeStore

RESULTS = Path(__file__).resolve().parent / "results" / "store_partitions.json"
NAME = "bench"  # store_scale.build's collection
LABEL_PARTS = {"single": 0, "by-label": 8}


def query(store: QdrantEdgeStore, data: DataSet, kind: str, i: int, ef: int) -> list[Hit]:
    return store.search(NAME, data.q[i], K, data.flt(kind, i), hnsw_ef=ef)


def measure(store: QdrantEdgeStore, layout: str, data: DataSet, kind: str, ef: int) -> dict[str, Any]:
    wall: list[float] = []
    cpu: list[float] = []
    recall: list[float] = []
    by_label: dict[str, list[float]] = {}
    for i in range(len(data.q)):
        hits = timed(wall, cpu, query, store, data, kind, i, ef)
        recall.append(len({int(uuid.UUID(h.id)) - 1 for h in hits} & data.truth[kind][i]) / K)
        if kind == "label":
            by_label.setdefault(LABELS[i % len(LABELS)], []).append(recall[-1])
    row = {"layout": layout, "kind": kind, "ef": ef, "load": os.getloadavg()[0]} | latency(wall, cpu)
    row["recall"] = float(np.mean(recall))
    if by_label:
        row["recall_by_label"] = {label: float(np.mean(r)) for label, r in by_label.items()}
    return row


def run_layout(layout: str, data: DataSet, args: argparse.Namespace) -> dict[str, Any]:
    tuning = IndexTuning(
        threshold_points=args.threshold,
        segment_points=args.segment,
        index_threads=args.index_threads,
        search_hnsw_ef=256,
        acorn_max_selectivity=0.4,
        exact_filter_max_points=500_000,
        label_parts=LABEL_PARTS[layout],
        label_parts_from=args.parts_from,
    )
    root = args.work / f"{layout}-{data.name}-{len(data.ids)}"
    shutil.rmtree(root, ignore_errors=True)
    say(f"{layout} {data.name} {len(data.ids):,}: writer loop")
    store = QdrantEdgeStore(root, linger_s=1e9, tuning=tuning)
    built = build(store, data, 1000, refresh=True)
    last: list[float] = []
    timed(last, [], store.optimize, NAME)
    built |= {"final_optimize_s": last[0], "parts": len(store._keys(NAME))}  # engine internals, for the report
    store.close()
    t0 = time.perf_counter()  # a new process's first search opens the collection: every part, for no filter
    store = QdrantEdgeStore(root, linger_s=1e9, tuning=tuning)
    query(store, data, "none", 0, 256)
    built["open_and_first_search_s"] = time.perf_counter() - t0
    out: dict[str, Any] = {"layout": layout, "build": built}
    for i in range(len(data.q)):  # warm the pages every query touches
        query(store, data, "label", i, 64)
        query(store, data, "none", i, 64)
    out["search"] = [
        measure(store, layout, data, kind, ef) for ef in args.efs for kind in ("none", "label", "selective")
    ]
    store.close()
    out["build"] |= disk_mb(root)
    shutil.rmtree(root)
    say(f"  built: {built['refreshes']} refreshes, {built['refresh_total_s']:.0f} s in all")
    return out


def print_table(results: list[dict[str, Any]]) -> None:
    print("| data | points | layout | ef | filter | p50 ms | p95 ms | recall@10 | lowest label recall |")
    print("|---|---|---|---|---|---|---|---|---|")
    for entry in results:
        for layout in entry["layouts"]:
            for r in layout["search"]:
                low = f"{min(r['recall_by_label'].values()):.3f}" if "recall_by_label" in r else ""
                print(
                    f"| {entry['data']} | {entry['points']:,} | {r['layout']} | {r['ef']} | {r['kind']} | "
                    f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['recall']:.3f} | {low} |"
                )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(p)
    p.add_argument("--layouts", default="single,by-label")
    p.add_argument("--efs", type=lambda s: [int(v) for v in s.split(",")], default=[64, 256])
    p.add_argument("--threshold", type=int, default=20_000, help="index writer threshold (points)")
    p.add_argument("--segment", type=int, default=200_000, help="largest segment (points)")
    p.add_argument("--index-threads", type=int, default=1)
    p.add_argument(
        "--parts-from", type=int, default=20_000, help="labels get graphs once the shared one holds this many points"
    )
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--work", type=Path, default=Path("/tmp/cxr-store-partitions"))
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    parents = embed_public(args.manifest, args.model, args.work / "cache")
    run = {
        "id": f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "model": parents.model_note,
        "cpus": os.cpu_count(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": [],
    }
    for name in args.data.split(","):
        for n in (int(v) for v in args.sizes.split(",")):
            data = DataSet(name, parents, n, args.queries)
            entry = {"data": name, "points": n, "shares": data.share, "layouts": []}
            run["results"].append(entry)
            for layout in args.layouts.split(","):
                entry["layouts"].append(run_layout(layout, data, args))
                save(args.out, run)
    print_table(run["results"])
    return 0


def save(out: Path, run: dict[str, Any]) -> None:
    """Add or replace this run in the JSON (after every layout, so a long run keeps what it measured)."""
    doc = json.loads(out.read_text()) if out.exists() else {"runs": []}
    doc["runs"] = [r for r in doc["runs"] if r["id"] != run["id"]] + [run]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    raise SystemExit(main())
