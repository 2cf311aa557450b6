"""What the audit trail costs a search: `POST /v1/search` p50 and p95 with the audit trail on against off, in the
same run (rounds alternate, same app, same store, same files), as a ratio. Target: at most 5% slower at p50.

The app is the real one (TestClient: upload, sniff, decode, encode, search, JSON, the audit record committed with
synchronous=FULL before the answer), over an embedded store holding N cxr-public images indexed by `--model`.

    python -m benchmarks.audit_cost --model ~/.local/share/cxr/models/default [--n 1000] [--queries 60] [--rounds 6]

Prints a table and writes benchmarks/results/audit_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "audit_cost.json"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cxr-public"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--n", type=int, default=1000, help="Images indexed.")
    ap.add_argument("--queries", type=int, default=60, help="Searches per round.")
    ap.add_argument("--rounds", type=int, default=6, help="Rounds, alternating on and off.")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    from fastapi.testclient import TestClient

    from services.api.app import create_app
    from services.config import Settings
    from services.manifest import read_manifest
    from services.pipeline import IngestOptions, Ingestor, Runtime, build_items

    rows = read_manifest(args.data / "manifest.csv")
    step = max(1, len(rows) // args.n)
    indexed = [r for r in rows[::step]][: args.n]
    queries = [r.path for r in rows[1::step]][: args.queries]
    with tempfile.TemporaryDirectory(prefix="cxr-audit-bench-") as tmp:
        settings = Settings(data_dir=Path(tmp), patient_salt="bench", model=args.model)
        with Runtime(settings) as rt:
            items, _ = build_items([r.path for r in indexed])
            opts = IngestOptions.from_settings(settings)
            Ingestor(rt.encoder, rt.store, opts, salt=settings.salt, refs=rt.ledger.put_refs).run(items)
        app = create_app(settings, runtime=Runtime(settings))
        times: dict[str, list[float]] = {"on": [], "off": []}
        with TestClient(app) as client:
            client.app.state.api.wait_ready(120)
            audit = client.app.state.api.audit
            bodies = [p.read_bytes() for p in queries]

            def search(body: bytes) -> float:
                t0 = time.perf_counter()
                r = client.post("/v1/search?k=10", files={"file": ("q.jpg", body, "image/jpeg")})
                elapsed = time.perf_counter() - t0
                assert r.status_code == 200, r.text
                return elapsed

            for body in bodies[:5]:  # warm-up, not counted
                search(body)
            for rnd in range(args.rounds):
                mode = "on" if rnd % 2 == 0 else "off"
                audit.enabled = mode == "on"
                times[mode] += [search(b) for b in bodies]
            audit.enabled = True
            records = len(audit.records(action="api.search"))
            t0 = time.perf_counter()
            for _ in range(200):
                audit.record("bench", "bench.record", objects={"results": ["x"] * 10})
            record_ms = (time.perf_counter() - t0) / 200 * 1000

    def pct(xs: list[float], q: float) -> float:
        return statistics.quantiles(xs, n=100)[q - 1] * 1000 if q != 50 else statistics.median(xs) * 1000

    cases = {m: {"n": len(v), "p50_ms": round(pct(v, 50), 2), "p95_ms": round(pct(v, 95), 2)} for m, v in times.items()}
    ratio50 = cases["on"]["p50_ms"] / cases["off"]["p50_ms"]
    ratio95 = cases["on"]["p95_ms"] / cases["off"]["p95_ms"]
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "model": str(args.model),
        "indexed": len(indexed),
        "rounds": args.rounds,
        "cases": cases,
        "p50_ratio_on_over_off": round(ratio50, 3),
        "p95_ratio_on_over_off": round(ratio95, 3),
        "audit_records_written": records,
        "one_record_ms": round(record_ms, 2),
        "target": "p50 ratio <= 1.05",
        "met": ratio50 <= 1.05,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'audit':<6} {'n':>5} {'p50 ms':>8} {'p95 ms':>8}")
    for mode, c in cases.items():
        print(f"{mode:<6} {c['n']:>5} {c['p50_ms']:>8.2f} {c['p95_ms']:>8.2f}")
    print(f"on/off: p50 x{ratio50:.3f}, p95 x{ratio95:.3f}; one record {record_ms:.2f} ms (synchronous=FULL)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
