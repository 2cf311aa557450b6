"""One collection per label (a partitioned layout, issue 18's tenant lever) against today's single collection, in
one run, on benchmarks/store_scale.py's data (`real`, `hard`) and its writer loop.

- single: one collection; filtered searches take the store's default policy (exact when the filter keeps at most
  CXR_SEARCH_EXACT_FILTER_MAX_POINTS points, by the engine's estimate), unfiltered ones the graph at `ef`.
- partitioned: one collection per label value (labels outside store_scale_data.LABELS share one "rest"
  collection). A label filter becomes an unfiltered search of that label's own graph; the selective filter
  (label AND source) searches the label's collection with the source filter, under the same default policy; an
  unfiltered search asks every collection for its top 10 and merges them by score.

Each row: p50/p95 wall and CPU ms and recall@10 against numpy's exact answer, per label for the label filter. Build:
the writer's refreshes (optimize() whenever a collection holds `threshold` unindexed points), in all and the
longest, and the store's size on disk.

    python -m benchmarks.store_partitions --model runs/headline/lite1-45min --sizes 1000000 --data real

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

from benchmarks.store_scale import DataSet, K, add_data_arguments, batches, disk_mb, latency, say, timed
from benchmarks.store_scale_data import LABELS, SELECTIVE, embed_public
from services.index import Hit, IndexTuning, QdrantEdgeStore, SearchFilter

RESULTS = Path(__file__).resolve().parent / "results" / "store_partitions.json"
REST = "rest"
PARTS = (*LABELS, REST)


def part_of(label: str | None) -> str:
    return label if label in LABELS else REST


def build(store: QdrantEdgeStore, data: DataSet, names: dict[str, str], threshold: int) -> dict[str, Any]:
    """Upsert every point into the collection `names` gives its label, in the writer's batches; refresh each
    collection once it holds `threshold` unindexed points, and every collection once at the end."""
    for name in set(names.values()):
        store.create_collection(name, data.x.shape[1])
    upsert_wall: list[float] = []
    refresh_wall: list[float] = []
    refresh_cpu: list[float] = []
    for points in batches(data, 1000):
        by_name: dict[str, list[Any]] = {}
        for point in points:
            by_name.setdefault(names[part_of(point.payload.get("label"))], []).append(point)
        for name, group in by_name.items():
            timed(upsert_wall, [], store.upsert, name, group)
            if store.unindexed_count(name) >= threshold:
                timed(refresh_wall, refresh_cpu, store.optimize, name)
    for name in set(names.values()):
        timed(refresh_wall, refresh_cpu, store.optimize, name)
    return {
        "upsert_pts_per_s": len(data.ids) / sum(upsert_wall),
        "refreshes": len(refresh_wall),
        "refresh_total_s": sum(refresh_wall),
        "refresh_max_s": max(refresh_wall),
        "refresh_cpu_total_s": sum(refresh_cpu),
        "points_per_collection": {name: store.count(name) for name in sorted(set(names.values()))},
    }


def fan_out(store: QdrantEdgeStore, q: np.ndarray, ef: int) -> list[Hit]:
    hits = [h for part in PARTS for h in store.search(part, q, K, hnsw_ef=ef)]
    return sorted(hits, key=lambda h: -h.score)[:K]


def query(store: QdrantEdgeStore, layout: str, data: DataSet, kind: str, i: int, ef: int) -> list[Hit]:
    q = data.q[i]
    if layout == "single":
        return store.search("all", q, K, data.flt(kind, i), hnsw_ef=ef)
    if kind == "none":
        return fan_out(store, q, ef)
    if kind == "label":
        return store.search(LABELS[i % len(LABELS)], q, K, hnsw_ef=ef)
    return store.search(SELECTIVE["label"], q, K, SearchFilter(must={"source": SELECTIVE["source"]}), hnsw_ef=ef)


def measure(store: QdrantEdgeStore, layout: str, data: DataSet, kind: str, ef: int) -> dict[str, Any]:
    wall: list[float] = []
    cpu: list[float] = []
    recall: list[float] = []
    by_label: dict[str, list[float]] = {}
    for i in range(len(data.q)):
        hits = timed(wall, cpu, query, store, layout, data, kind, i, ef)
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
    )
    root = args.work / f"{layout}-{data.name}-{len(data.ids)}"
    shutil.rmtree(root, ignore_errors=True)
    say(f"{layout} {data.name} {len(data.ids):,}: writer loop")
    store = QdrantEdgeStore(root, linger_s=1e9, tuning=tuning)
    names = {part: ("all" if layout == "single" else part) for part in PARTS}
    out: dict[str, Any] = {"layout": layout, "build": build(store, data, names, args.threshold)}
    for i in range(len(data.q)):  # warm the pages every query touches
        query(store, layout, data, "label", i, 64)
        query(store, layout, data, "none", i, 64)
    out["search"] = [
        measure(store, layout, data, kind, ef) for ef in args.efs for kind in ("none", "label", "selective")
    ]
    store.close()
    out["build"] |= disk_mb(root)
    shutil.rmtree(root)
    say(f"  built: {out['build']['refreshes']} refreshes, {out['build']['refresh_total_s']:.0f} s in all")
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
    p.add_argument("--layouts", default="single,partitioned")
    p.add_argument("--efs", type=lambda s: [int(v) for v in s.split(",")], default=[64, 128, 256])
    p.add_argument("--threshold", type=int, default=20_000, help="index writer threshold (points)")
    p.add_argument("--segment", type=int, default=200_000, help="largest segment (points)")
    p.add_argument("--index-threads", type=int, default=1)
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
