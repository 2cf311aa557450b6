"""Issue 18's first lever for filtered search: does int8 scalar quantization (originals kept for the rescore) make
the engine's exact filtered scan cheaper? One run, the same real-like points (benchmarks/store_scale_data.py) in
two embedded shards, one plain and one with int8 quantization held in RAM, each HNSW-indexed by the same writer
loop; then the exact filtered searches (label filter, selective filter) on both, against numpy's exact answer.

The adapter (services.index) does not expose quantization; this benchmark sets it on the engine directly, which
is what the adapter would do if it won.

    python -m benchmarks.exact_filter_quantization --model runs/headline/lite1-45min --points 200000

Prints a table and adds the run to benchmarks/results/exact_filter_quantization.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from benchmarks.store_scale import DataSet, K, latency, say, timed
from benchmarks.store_scale_data import LABELS, SELECTIVE, embed_public

RESULTS = Path(__file__).resolve().parent / "results" / "exact_filter_quantization.json"
REPO = Path(__file__).resolve().parents[1]
MODES = {
    "plain": qe.QuantizationSearchParams(ignore=True),
    "int8, rescore, oversampling 1": qe.QuantizationSearchParams(ignore=False, rescore=True, oversampling=1.0),
    "int8, rescore, oversampling 2": qe.QuantizationSearchParams(ignore=False, rescore=True, oversampling=2.0),
}


def shard_for(path: Path, dim: int, quantized: bool, threshold_points: int) -> qe.EdgeShard:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    qc = qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=0.99, always_ram=True) if quantized else None
    opt = qe.EdgeOptimizersConfig(indexing_threshold=max(1, threshold_points * dim * 4 // 1024))
    cfg = qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine), quantization_config=qc, optimizers=opt
    )
    shard = qe.EdgeShard.create(str(path), cfg)
    for key in ("label", "source"):
        shard.update(qe.UpdateOperation.create_field_index(key, qe.PayloadSchemaType.Keyword))
    return shard


def fill(shard: qe.EdgeShard, data: DataSet, threshold_points: int) -> dict[str, float]:
    """Upsert in batches of 1,000 and optimize every `threshold_points`, as the index writer does."""
    labels, sources = data.parents.labels[data.parent], data.parents.sources[data.parent]
    t0, since = time.perf_counter(), 0
    for start in range(0, len(data.x), 1000):
        stop = min(start + 1000, len(data.x))
        points = [
            qe.Point(i, data.x[i].tolist(), {"label": str(labels[i]), "source": str(sources[i])})
            for i in range(start, stop)
        ]
        shard.update(qe.UpdateOperation.upsert_points(points))
        since += stop - start
        if since >= threshold_points:
            shard.optimize()
            since = 0
    shard.optimize()
    shard.flush()
    return {"build_s": time.perf_counter() - t0, "segments": shard.info().segments_count}


def engine_filter(data: DataSet, kind: str, i: int) -> qe.Filter:
    must = dict(SELECTIVE) if kind == "selective" else {"label": LABELS[i % 4]}
    return qe.Filter(must=[qe.FieldCondition(k, match=qe.MatchValue(v)) for k, v in must.items()])


def measure(shard: qe.EdgeShard, data: DataSet, kind: str, quantization: qe.QuantizationSearchParams) -> dict:
    params = qe.SearchParams(exact=True, quantization=quantization)
    lat: list[float] = []
    cpu: list[float] = []
    rec = []
    for i, q in enumerate(data.q):
        request = qe.QueryRequest(
            limit=K, query=qe.Query.Nearest(q.tolist()), filter=engine_filter(data, kind, i), params=params
        )
        found = timed(lat, cpu, shard.query, request)
        rec.append(len({int(h.id) for h in found} & data.truth[kind][i]) / K)
    return latency(lat, cpu) | {"recall": float(np.mean(rec)), "load": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", type=Path, default=REPO.parent / "shared/data/cxr-public/manifest.csv")
    p.add_argument("--model", type=Path, help="trained checkpoint folder (default: random-init vit-tiny, said so)")
    p.add_argument("--points", type=int, default=200_000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--threshold", type=int, default=20_000, help="index writer threshold (points)")
    p.add_argument("--work", type=Path, default=Path("/tmp/cxr-exact-quant"))
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    parents = embed_public(args.manifest, args.model, args.work / "cache")
    data = DataSet("real", parents, args.points, args.queries)
    rows: list[dict[str, Any]] = []
    builds = {}
    for quantized in (False, True):
        name = "int8" if quantized else "plain"
        say(f"{name}: writer loop over {args.points:,} points")
        shard = shard_for(args.work / name, data.x.shape[1], quantized, args.threshold)
        builds[name] = fill(shard, data, args.threshold)
        for kind in ("label", "selective"):  # warm the pages once
            measure(shard, data, kind, MODES["plain"])
        for mode, quantization in MODES.items():
            if quantized == (mode == "plain"):
                continue
            for kind in ("label", "selective"):
                rows.append({"shard": name, "mode": mode, "kind": kind} | measure(shard, data, kind, quantization))
        shard.close()
        shutil.rmtree(args.work / name)
    print(f"\n| search ({args.points:,} points) | label filter p50 / p95 ms (CPU), recall@10 | selective filter |")
    print("|---|---|---|")
    for mode in MODES:
        cells = [r for r in rows if r["mode"] == mode]
        text = [f"{r['p50_ms']:.2f} / {r['p95_ms']:.2f} ({r['cpu_p50_ms']:.2f}), {r['recall']:.3f}" for r in cells]
        print(f"| exact, {mode} | " + " | ".join(text) + " |")
    doc = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
    doc["runs"].append(
        {
            "id": f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            "when": time.strftime("%Y-%m-%d %H:%M"),
            "model": parents.model_note,
            "machine": {"cpus": os.cpu_count(), "load_avg_at_save": os.getloadavg()},
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "shares": data.share,
            "builds": builds,
            "rows": rows,
        }
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
