"""The embedded store at scale, against numpy exact search, in one run: upsert rate, index build (the index
writer's incremental refreshes, and optionally one full build), p50/p95 search unfiltered, with a label filter and
with a selective filter (source AND label), recall@10 against the exact answer, and the memory (RSS) and open time
of a process serving the store. Data sets: benchmarks/store_scale_data.py (`real`, `hard`).

The writer loop is the queue's: upsert batches through the project's adapter, and call optimize() whenever
`unindexed_count` reaches the threshold. Single queries, one at a time; numpy on one BLAS thread, the engine with
its default search threads (one per core). Where CXR_TEST_QDRANT_URL is set, the server adapter is measured too.

    python -m benchmarks.store_scale --sizes 100000 --grid 16x100,32x100,32x200      # the grid at 100k
    python -m benchmarks.store_scale --sizes 1000000 --grid 32x200 --efs 128,256     # the chosen config at 1M

Prints tables and adds the run to benchmarks/results/store_scale.json (each run kept, with its settings).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # numpy's exact baseline on one core, before numpy loads

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks.store_scale_data import (  # noqa: E402
    LABELS,
    SELECTIVE,
    HardMixture,
    Parents,
    RealLike,
    embed_public,
    point_payloads,
)
from benchmarks.store_scale_report import KINDS, print_tables  # noqa: E402
from services.index import IndexTuning, PointRecord, QdrantEdgeStore, SearchFilter  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "store_scale.json"
REPO = Path(__file__).resolve().parents[1]

K = 10
PROBE = """
import json, sys, time
import numpy as np
from pathlib import Path
def rss():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) / 1024
from services.index import QdrantEdgeStore
before = rss()
store = QdrantEdgeStore(Path(sys.argv[1]), linger_s=3600)
t0 = time.perf_counter(); store.count('bench'); open_s = time.perf_counter() - t0
for q in np.load(sys.argv[2]):
    store.search('bench', q, 10)
print(json.dumps({"rss_before_mb": before, "rss_mb": rss(), "open_s": open_s}))
store.close()
"""


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


def timed(lat: list[float], cpu: list[float], fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call fn, appending its wall time and this process's CPU time (all threads): on a shared, oversubscribed
    machine the wall time includes waiting for a core, the CPU time is the work done."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    lat.append(time.perf_counter() - w0)
    cpu.append(time.process_time() - c0)
    return out


def latency(lat: list[float], cpu: list[float]) -> dict[str, float]:
    return {"p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95), "cpu_p50_ms": pct(cpu, 50), "cpu_p95_ms": pct(cpu, 95)}


class DataSet:
    """N points (vectors, parents) + queries, the filters of each query and the exact top-10 for each."""

    def __init__(self, name: str, parents: Parents, n: int, n_queries: int, seed: int = 0) -> None:
        gen = RealLike(parents) if name == "real" else HardMixture(parents.vectors.shape[1], len(parents.rows))
        rng = np.random.default_rng(seed)
        t0 = time.perf_counter()
        self.name, self.parents = name, parents
        self.x, self.parent = gen.sample(n, rng)
        self.q, _ = gen.sample(n_queries, np.random.default_rng(seed + 1))
        self.ids = [str(uuid.UUID(int=i + 1)) for i in range(n)]
        labels, sources = parents.labels[self.parent], parents.sources[self.parent]
        sel = np.flatnonzero((labels == SELECTIVE["label"]) & (sources == SELECTIVE["source"]))
        self.subsets = {("label", lab): np.flatnonzero(labels == lab) for lab in LABELS}
        self.subsets[("selective", "")] = sel
        self.share = {f"{k}={v}" if v else k: len(ix) / n for (k, v), ix in self.subsets.items()}
        self.truth = {kind: self._truth(kind) for kind in KINDS}
        say(f"{name} {n:,}: data and exact answers in {time.perf_counter() - t0:.0f} s; shares {self.share}")

    def subset_key(self, kind: str, i: int) -> tuple[str, str] | None:
        return None if kind == "none" else ("selective", "") if kind == "selective" else ("label", LABELS[i % 4])

    def flt(self, kind: str, i: int) -> SearchFilter | None:
        key = self.subset_key(kind, i)
        if key is None:
            return None
        return SearchFilter(must=dict(SELECTIVE)) if key[0] == "selective" else SearchFilter(must={"label": key[1]})

    def _truth(self, kind: str) -> list[set[int]]:
        out = []
        for i, q in enumerate(self.q):
            key = self.subset_key(kind, i)
            idx = None if key is None else self.subsets[key]
            scores = self.x @ q if idx is None else self.x[idx] @ q
            top = np.argpartition(-scores, K)[:K]
            out.append(set((top if idx is None else idx[top]).tolist()))
        return out

    def numpy_exact(self) -> dict[str, dict[str, float]]:
        """Brute force on one core, with each filter's rows pre-gathered (numpy's best case)."""
        mats = {key: np.ascontiguousarray(self.x[ix]) for key, ix in self.subsets.items()}
        out = {}
        for kind in KINDS:
            lat: list[float] = []
            cpu: list[float] = []
            for i, q in enumerate(self.q):
                key = self.subset_key(kind, i)
                timed(lat, cpu, exact_top, self.x if key is None else mats[key], q)
            out[kind] = latency(lat, cpu) | {"recall": 1.0}
        return out


def exact_top(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    scores = x @ q
    top = np.argpartition(-scores, K)[:K]
    return top[np.argsort(-scores[top])]


def batches(data: DataSet, batch: int) -> Any:
    """The points with their payloads, `batch` at a time, as the index writer receives them."""
    for start in range(0, len(data.ids), batch):
        stop = min(start + batch, len(data.ids))
        payloads = point_payloads(data.parents, data.parent[start:stop], start)
        yield [PointRecord(data.ids[i], data.x[i], p) for i, p in zip(range(start, stop), payloads, strict=True)]


def build(store: QdrantEdgeStore, data: DataSet, batch: int, refresh: bool) -> dict[str, Any]:
    """Upsert everything through the adapter; with `refresh`, the index writer's loop."""
    store.create_collection("bench", data.x.shape[1])
    up_wall: list[float] = []
    up_cpu: list[float] = []
    refreshes: list[float] = []
    refresh_cpu: list[float] = []
    threshold = store.tuning.threshold_points or 0
    done = 0
    for points in batches(data, batch):
        done += len(points)
        timed(up_wall, up_cpu, store.upsert, "bench", points)
        if refresh and store.unindexed_count("bench") >= threshold:
            timed(refreshes, refresh_cpu, store.optimize, "bench")
            if len(refreshes) % 10 == 0:
                say(f"  {done:,} points, {len(refreshes)} refreshes, last {refreshes[-1]:.1f} s")
    shards = [store._shard(key) for key in store._keys("bench")]  # engine internals: segments, in every part
    out = {
        "upsert_pts_per_s": len(data.ids) / sum(up_wall),
        "upsert_pts_per_cpu_s": len(data.ids) / sum(up_cpu),
        "segments": sum(shard.info().segments_count for shard in shards),
    }
    if refresh:
        out |= {
            "refreshes": len(refreshes),
            "refresh_total_s": sum(refreshes),
            "refresh_median_s": float(np.median(refreshes)) if refreshes else 0.0,
            "refresh_max_s": max(refreshes, default=0.0),
            "refresh_last_s": refreshes[-1] if refreshes else 0.0,
            "refresh_times_s": [round(r, 2) for r in refreshes],
            "refresh_cpu_total_s": sum(refresh_cpu),
            "refresh_cpu_median_s": float(np.median(refresh_cpu)) if refresh_cpu else 0.0,
            "refresh_cpu_max_s": max(refresh_cpu, default=0.0),
            "refresh_cpu_s": [round(r, 2) for r in refresh_cpu],
            "unindexed_at_end": store.unindexed_count("bench"),
        }
    return out


def search_rows(
    store: Any, data: DataSet, efs: list[int], acorns: list[float], name: str = "bench"
) -> list[dict[str, Any]]:
    rows = []
    for i, q in enumerate(data.q):  # warm the caches (mmap pages, payload storage) with every query once
        store.search(name, q, K, data.flt("label", i))
    for ef in efs:
        for acorn in acorns:
            store.tuning = replace(store.tuning, acorn_max_selectivity=acorn)
            for kind in KINDS:
                if kind == "none" and acorn != acorns[0]:
                    continue  # ACORN only changes filtered searches
                rows.append({"ef": ef, "acorn": acorn} | measure(store, name, data, kind, hnsw_ef=ef))
    return rows


def measure(store: Any, name: str, data: DataSet, kind: str, **search: Any) -> dict[str, Any]:
    """Every query once with the `kind` of filter: latency, recall@10, and for label filters the recall per label
    (a filter that follows the embedding can fail for one value only)."""
    lat: list[float] = []
    cpu: list[float] = []
    rec = []
    by_value: dict[str, list[float]] = {}
    wall_by_value: dict[str, list[float]] = {}
    for i, q in enumerate(data.q):
        hits = timed(lat, cpu, store.search, name, q, K, data.flt(kind, i), **search)
        rec.append(len({int(uuid.UUID(h.id)) - 1 for h in hits} & data.truth[kind][i]) / K)
        key = data.subset_key(kind, i)
        if key is not None and key[0] == "label":
            by_value.setdefault(key[1], []).append(rec[-1])
            wall_by_value.setdefault(key[1], []).append(lat[-1])
    row = {"kind": kind, "load": os.getloadavg()[0]} | latency(lat, cpu) | {"recall": float(np.mean(rec))}
    if by_value:
        row["recall_by_label"] = {v: float(np.mean(r)) for v, r in by_value.items()}
        row["p50_ms_by_label"] = {v: pct(w, 50) for v, w in wall_by_value.items()}
    return row


def exact_rows(store: QdrantEdgeStore, data: DataSet) -> dict[str, dict[str, float]]:
    """The filtered searches scored exactly by the engine (IndexTuning.exact_filter_max_points, the default policy
    for filters keeping at most 500k points): the recall a graph cannot lose, and its price."""
    saved = store.tuning
    store.tuning = replace(saved, exact_filter_max_points=1 << 40)
    out: dict[str, Any] = {kind: measure(store, "bench", data, kind) for kind in ("label", "selective")}
    store.tuning = saved
    out["matches_estimate"] = matches_estimates(store, data)
    return out


def matches_estimates(store: QdrantEdgeStore, data: DataSet) -> dict[str, dict[str, float]]:
    """What the exact policy's decision costs: the engine's estimate of how many points each filter keeps (the
    count request the adapter's search path makes), its time, and the true count."""
    import qdrant_edge as qe

    from services.index.edge import _edge_filter

    flts = {f"label={lab}": SearchFilter(must={"label": lab}) for lab in LABELS} | {
        "selective": SearchFilter(must=dict(SELECTIVE))
    }
    out = {}
    with store._using("bench") as shard:  # the adapter's internals: its shard and filter translation
        for key, flt in flts.items():
            request = qe.CountRequest(filter=_edge_filter(flt), exact=False)
            wall: list[float] = []
            cpu: list[float] = []
            for _ in range(50):
                estimate = int(timed(wall, cpu, shard.count, request))
            out[key] = {"estimate": estimate, "true": round(data.share[key] * len(data.ids)), "p50_ms": pct(wall, 50)}
    return out


def probe_memory(root: Path, data: DataSet, work: Path) -> dict[str, float]:
    """RSS and open time of a fresh process that opens the store and answers 50 queries."""
    np.save(work / "probe_q.npy", data.q[:50])
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(root), str(work / "probe_q.npy")],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def disk_mb(path: Path) -> dict[str, float]:
    """Size of the store: files' lengths in all (`disk_mb`; the engine preallocates sparse files, so this
    overstates), the blocks they really use (`disk_used_mb`), and the write-ahead logs' lengths."""

    stats = [(f, f.stat()) for f in path.rglob("*") if f.is_file()]
    mb = 2**20
    return {
        "disk_mb": sum(st.st_size for _, st in stats) / mb,
        "disk_used_mb": sum(st.st_blocks * 512 for _, st in stats) / mb,
        "wal_mb": sum(st.st_size for f, st in stats if "wal" in f.relative_to(path).parts) / mb,
    }


def run_config(data: DataSet, args: argparse.Namespace, m: int, efc: int, work: Path) -> dict[str, Any]:
    tuning = IndexTuning(
        threshold_points=args.threshold,
        segment_points=args.segment,
        hnsw_m=m,
        hnsw_ef_construct=efc,
        hnsw_payload_m=args.payload_m,
        merge_segments=args.merge_segments,
        index_threads=args.index_threads,
    )
    root = work / f"{data.name}-{len(data.ids)}-{m}x{efc}"
    shutil.rmtree(root, ignore_errors=True)
    say(f"{data.name} {len(data.ids):,} m={m} ef_construct={efc}: writer loop")
    store = QdrantEdgeStore(root, linger_s=1e9, tuning=tuning)
    result: dict[str, Any] = {"m": m, "ef_construct": efc, "payload_m": args.payload_m}
    result |= {
        "merge_segments": args.merge_segments,
        "build": build(store, data, args.batch, refresh=not args.no_index),
    }
    result["search"] = [] if args.no_index else search_rows(store, data, args.efs, args.acorns)
    result["exact_filtered"] = exact_rows(store, data)
    store.close()
    result["serve"] = probe_memory(root, data, work) | disk_mb(root)
    shutil.rmtree(root)
    if args.full:
        full_root = work / "full"
        shutil.rmtree(full_root, ignore_errors=True)
        store = QdrantEdgeStore(full_root, linger_s=1e9, tuning=tuning)
        build(store, data, args.batch, refresh=False)
        say(f"{data.name} {len(data.ids):,} m={m} ef_construct={efc}: one full build")
        wall: list[float] = []
        cpu: list[float] = []
        timed(wall, cpu, store.optimize, "bench")
        result["full_build_s"], result["full_build_cpu_s"] = wall[0], cpu[0]
        store.close()
        shutil.rmtree(full_root)
    b = result["build"]
    if args.no_index:
        return result
    say(f"  done: {b['refreshes']} refreshes, {b['refresh_total_s']:.0f} s in all, max {b['refresh_max_s']:.1f} s")
    return result


def server_rows(data: DataSet, args: argparse.Namespace) -> dict[str, Any] | None:
    url = os.environ.get("CXR_TEST_QDRANT_URL")
    if not url:
        return None
    from services.index import QdrantServerStore

    store = QdrantServerStore(url, tuning=IndexTuning(threshold_points=args.threshold))
    name = f"bench-{uuid.uuid4().hex[:8]}"
    store.create_collection(name, data.x.shape[1])
    t0 = time.perf_counter()
    for points in batches(data, args.batch):
        store.upsert(name, points)
    upsert_s = time.perf_counter() - t0
    deadline = time.monotonic() + 3600
    while store.unindexed_count(name) > args.threshold and time.monotonic() < deadline:
        time.sleep(1)  # the server indexes in the background; poll its count
    built_s = time.perf_counter() - t0
    rows = search_rows(store, data, args.efs, args.acorns, name)
    store.delete_collection(name)
    store.close()
    return {"upsert_pts_per_s": len(data.ids) / upsert_s, "indexed_after_s": built_s, "search": rows}


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """The options that choose the data sets (benchmarks/store_scale_data.py), shared with store_partitions.py."""
    p.add_argument("--manifest", type=Path, default=REPO.parent / "shared/data/cxr-public/manifest.csv")
    p.add_argument("--model", type=Path, help="trained checkpoint folder (default: random-init vit-tiny, said so)")
    p.add_argument("--data", default="real,hard")
    p.add_argument("--sizes", default="100000")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(p)
    p.add_argument("--grid", default="16x100", help="comma-separated MxEF_CONSTRUCT build configs")
    p.add_argument("--efs", type=lambda s: [int(v) for v in s.split(",")], default=[64, 128, 256])
    p.add_argument("--acorns", type=lambda s: [float(v) for v in s.split(",")], default=[0.0, 0.4])
    p.add_argument("--threshold", type=int, default=20_000, help="index writer threshold (points)")
    p.add_argument("--segment", type=int, default=200_000, help="largest segment (points)")
    p.add_argument("--index-threads", type=int, default=1)
    p.add_argument("--payload-m", type=int, help="degree of the per-value payload graphs (0: none; default: m)")
    p.add_argument("--merge-segments", type=int, help="merge only past this many segments (default: engine's)")
    p.add_argument("--batch", type=int, default=1000, help="points per upsert")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--full", action="store_true", help="also time one full build of everything at once")
    p.add_argument("--no-index", action="store_true", help="upsert only: the engine's exact filtered rows, no graph")
    p.add_argument("--work", type=Path, default=Path("/tmp/cxr-store-scale"))
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    parents = embed_public(args.manifest, args.model, args.work / "cache")
    say(parents.model_note)
    results: list[dict[str, Any]] = []
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    for name in args.data.split(","):
        for n in (int(v) for v in args.sizes.split(",")):
            data = DataSet(name, parents, n, args.queries)
            entry: dict[str, Any] = {"data": name, "points": n, "dim": int(data.x.shape[1]), "shares": data.share}
            entry["numpy_exact"] = data.numpy_exact()
            entry["configs"] = []
            for spec in args.grid.split(","):
                m, efc = (int(v) for v in spec.split("x"))
                entry["configs"].append(run_config(data, args, m, efc, args.work))
            entry["server"] = server_rows(data, args)
            results.append(entry)
            save(args, parents, results, run_id)
    print_tables(results)
    return 0


def save(args: argparse.Namespace, parents: Parents, results: list[dict[str, Any]], run_id: str) -> None:
    """Write this run into the JSON (after every data set, so a long run keeps what it measured)."""
    doc = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
    run = {
        "id": run_id,
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "model": parents.model_note,
        "machine": {"cpus": os.cpu_count(), "load_avg_at_save": os.getloadavg()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": results,
    }
    doc["runs"] = [r for r in doc["runs"] if r.get("id") != run_id] + [run]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    raise SystemExit(main())
