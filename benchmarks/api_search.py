"""End-to-end `POST /v1/search` at 100k points (upload, sniff, decode, encode, search, JSON), against the same
search done in process (`cxr search`'s path: decode, encode, search) in the same run.

The store: the model's embeddings of cxr-public grown to N points on the data's own manifold
(benchmarks/store_scale_data.RealLike), with the project's payloads and the checkpoint's model id, written through
the adapter with the Settings defaults (CXR_HNSW_*, CXR_INDEX_*) and indexed. The API: a real `cxr serve` process
on loopback, with the default inference back end, queried over HTTP with real files (cxr-public JPEGs and
pydicom-data's chest CR DICOMs), one request at a time. Rounds alternate between the two so both share the
machine's load; the store is handed between the two processes by the embedded store's turn taking, and each
round starts with warm-up queries that are not counted.

    python -m benchmarks.api_search --model runs/hybrid128                 # 100k points, 100 queries x 3 rounds

Prints a table and writes benchmarks/results/api_search.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.store_scale_data import RealLike, embed_public, point_payloads
from services.config import Settings
from services.embedding.checkpoint_meta import checkpoint_id
from services.index import PointRecord, open_store
from services.manifest import read_manifest
from services.pipeline import QueryOptions, Runtime, search_file

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "api_search.json"
CASES = {  # name: (query string of /v1/search, QueryOptions overrides)
    "unfiltered": ("k=10", {}),
    "label filter": ("k=10&filter=label=normal", {"filters": ("label=normal",)}),
    "one per patient": ("k=10&group_by_patient=true", {"group_by_patient": True}),
}


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_store(settings: Settings, model: Path, manifest: Path, n: int, cache: Path) -> dict[str, Any]:
    """N real-like points in the default collection, indexed; returns what it took."""
    parents = embed_public(manifest, model, cache)
    model_id = checkpoint_id(model)
    x, parent = RealLike(parents).sample(n, np.random.default_rng(0))
    store = open_store(settings)
    store.create_collection(settings.collection, x.shape[1])
    t0 = time.perf_counter()
    for start in range(0, n, 1000):
        stop = min(start + 1000, n)
        payloads = [p | {"model_id": model_id} for p in point_payloads(parents, parent[start:stop], start)]
        ids = [f"00000000-0000-4000-8000-{i:012x}" for i in range(start, stop)]
        store.upsert(
            settings.collection, [PointRecord(i, v, p) for i, v, p in zip(ids, x[start:stop], payloads, strict=True)]
        )
    upsert_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.optimize(settings.collection)
    out = {"points": store.count(settings.collection), "upsert_s": upsert_s, "optimize_s": time.perf_counter() - t0}
    store.close()
    return out | {"model_note": parents.model_note}


def query_files(manifest: Path, n: int) -> list[Path]:
    """n cxr-public images (spread over the manifest) and every pydicom-data chest CR."""
    rows = read_manifest(manifest)
    picks = [rows[i].path for i in np.linspace(0, len(rows) - 1, n, dtype=int)]
    try:
        import data_store  # the pydicom-data package

        picks += sorted((Path(data_store.__file__).parent / "data").glob("RG1_*.dcm"))
    except ImportError:
        say("pydicom-data is not installed: JPEG queries only")
    return picks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    cmd = [str(Path(sys.executable).with_name("cxr")), "serve", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"cxr serve exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"cxr serve not ready in 300 s; see {log}")


def api_round(client: httpx.Client, files: list[Path], query: str, warmup: int) -> list[float]:
    lat = []
    for i, path in enumerate(files[:warmup] + files):
        t0 = time.perf_counter()
        r = client.post(f"/v1/search?{query}", files={"file": (path.name, path.read_bytes())})
        dt = time.perf_counter() - t0
        if r.status_code != 200:
            raise SystemExit(f"{path}: HTTP {r.status_code} {r.text[:200]}")
        if len(r.json()["hits"]) != 10:
            raise SystemExit(f"{path}: {len(r.json()['hits'])} hits, not 10")
        if i >= warmup:
            lat.append(dt)
    return lat


def inline_round(runtime: Runtime, files: list[Path], overrides: dict[str, Any], warmup: int) -> list[float]:
    opts = QueryOptions(collection=runtime.settings.collection, k=10, **overrides)
    lat = []
    for i, path in enumerate(files[:warmup] + files):
        t0 = time.perf_counter()
        result = search_file(path, encoder=runtime.encoder, store=runtime.store, opts=opts, salt=runtime.settings.salt)
        dt = time.perf_counter() - t0
        assert len(result.hits) == 10, path
        if i >= warmup:
            lat.append(dt)
    runtime.close()  # hand the store back to the server for its round (reopened on the next use)
    return lat


def stats(lat: list[float], files: list[Path]) -> dict[str, float]:
    """p50/p95 over the JPEG queries (cxr-public: 320 px), and the median of the DICOM ones (full-size CRs,
    whose decode dominates) apart, so the few large files do not masquerade as a tail."""
    a = np.array(lat) * 1000
    dcm = np.array([f.suffix == ".dcm" for f in files])
    out = {"p50_ms": float(np.percentile(a[~dcm], 50)), "p95_ms": float(np.percentile(a[~dcm], 95))}
    out |= {"n_jpeg": int((~dcm).sum()), "n_dicom": int(dcm.sum())}
    if dcm.any():
        out["dicom_p50_ms"] = float(np.percentile(a[dcm], 50))
    return out


def cell(s: dict[str, float]) -> str:
    dicom = f" ({s['dicom_p50_ms']:.0f})" if "dicom_p50_ms" in s else ""
    return f"{s['p50_ms']:.1f} / {s['p95_ms']:.1f}{dicom}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="trained checkpoint folder")
    p.add_argument("--manifest", type=Path, default=REPO.parent / "shared/data/cxr-public/manifest.csv")
    p.add_argument("--points", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=100, help="cxr-public JPEGs per round (plus the chest DICOMs)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--work", type=Path, default=Path("/tmp/cxr-api-search"))
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    model = args.model.resolve()
    data_dir = args.work / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env |= {"CXR_DATA_DIR": str(data_dir), "CXR_MODEL": str(model)}
    os.environ.update(env)
    settings = Settings()
    say(f"building {args.points:,} points in {settings.store_path}")
    built = build_store(settings, model, args.manifest.resolve(), args.points, args.work / "cache")
    say(f"store: {built}")
    files = query_files(args.manifest.resolve(), args.queries)
    runtime = Runtime(settings)
    port = free_port()
    server = start_server(env, port, args.work / "serve.log")
    rounds: dict[str, dict[str, list[list[float]]]] = {c: {"api": [], "inline": []} for c in CASES}
    loads = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            for rnd in range(args.rounds):
                loads.append(os.getloadavg()[0])
                for case, (query, overrides) in CASES.items():
                    rounds[case]["inline"].append(inline_round(runtime, files, overrides, args.warmup))
                    rounds[case]["api"].append(api_round(client, files, query, args.warmup))
                    say(
                        f"round {rnd + 1} {case}: api p50 {stats(rounds[case]['api'][-1], files)['p50_ms']:.1f} ms, "
                        f"inline {stats(rounds[case]['inline'][-1], files)['p50_ms']:.1f} ms"
                    )
    finally:
        server.terminate()
        server.wait(30)
    rows = {}
    for case, by in rounds.items():
        per = {kind: [stats(r, files) for r in rs] for kind, rs in by.items()}
        best = {kind: min(v, key=lambda s: s["p50_ms"]) for kind, v in per.items()}
        rows[case] = {
            "best_round": best,
            "rounds": per,
            "api_overhead_p50_ms": best["api"]["p50_ms"] - best["inline"]["p50_ms"],
        }
    doc = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "model": f"checkpoint {model} ({built.pop('model_note')})",
        "inference_backend": settings.inference_backend or "eager",
        "store": built,
        "query_files": {
            "jpeg": sum(f.suffix == ".jpg" for f in files),
            "dicom": sum(f.suffix == ".dcm" for f in files),
        },
        "cores": os.cpu_count(),
        "load_avg_1min_at_round_start": loads,
        "rule": f"best p50 of {args.rounds} alternating rounds, {args.warmup} warm-up queries per round not counted",
        "cases": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    print(f"\n{built['points']:,} points, back end {doc['inference_backend']}, load {loads}")
    print(
        "| search | POST /v1/search p50 / p95 ms (DICOM p50) | in process, the cxr search path "
        "| HTTP + upload overhead p50 ms |"
    )
    print("|---|---|---|---|")
    for case, row in rows.items():
        a, b = row["best_round"]["api"], row["best_round"]["inline"]
        print(f"| {case} | {cell(a)} | {cell(b)} | {row['api_overhead_p50_ms']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
