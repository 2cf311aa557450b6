"""Eight 79-Mpx PNG uploads at once to a real `cxr serve` (issue 18, part 1): the server's peak resident set
against its resting size plus the decode memory ceiling (CXR_API_DECODE_MEMORY_MB), and what each request is
answered: 200, or 413/503 with a reason code, never a dropped connection or a dead server.

The upload is an 8,900 x 8,900 8-bit PNG of a few hundred KB (the issue's case: 198 KB on disk, 7 s of CPU and
2.1 GB when decoded in full). Each row is one server on a small embedded store (cxr-public images indexed by
`cxr index`), warmed by one small search, then VmHWM reset (/proc/PID/clear_refs) so the peak is the burst's. Rows:
eight searches and eight previews (`/v1/render`) at the default ceiling, and eight searches under a ceiling that
fits one reduced decode, where the others wait CXR_API_DECODE_WAIT_S and are refused as busy.

    python -m benchmarks.upload_burst --model runs/demo

Prints a table and writes benchmarks/results/upload_burst.json.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from benchmarks.api_search import free_port, say, start_server
from benchmarks.serve_memory import index_store, memory
from services.config import Settings

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "upload_burst.json"
CONCURRENT = 8


def big_png(side: int) -> bytes:
    """A PNG with `side`^2 pixels that compresses to a few hundred KB."""
    ramp = np.add.outer(np.arange(side) // 3, np.arange(side) // 5) % 256
    buf = io.BytesIO()
    Image.fromarray(ramp.astype(np.uint8)).save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


def small_store(work: Path, manifest: Path, n: int) -> Path:
    """A manifest of `n` cxr-public rows, with absolute paths."""
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = work / "index.csv"
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows[:: max(1, len(rows) // n)][:n]:
            writer.writerow(row | {"path": str(manifest.parent / row["path"])})
    return out


def burst(base: str, route: str, data: bytes) -> list[dict[str, Any]]:
    """CONCURRENT uploads of `data` to `route` at once; each answer's status, reason and seconds."""

    def send(_: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            r = httpx.post(base + route, params={"k": 10} if route == "/v1/search" else {},
                           files={"file": ("big.png", data)}, timeout=600)  # fmt: skip
        except httpx.HTTPError as exc:
            return {"status": None, "error": type(exc).__name__, "s": round(time.perf_counter() - t0, 2)}
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        reason = body.get("reason") if isinstance(body, dict) else None
        return {"status": r.status_code, "reason": reason, "retry_after": r.headers.get("retry-after"),
                "s": round(time.perf_counter() - t0, 2)}  # fmt: skip

    with ThreadPoolExecutor(CONCURRENT) as pool:
        return list(pool.map(send, range(CONCURRENT)))


def run_row(
    label: str, route: str, ceiling_mb: int, env: dict[str, str], data: bytes, args: argparse.Namespace
) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = env | {"CXR_API_DECODE_MEMORY_MB": str(ceiling_mb)}
    proc = start_server(env, port, args.work / f"serve-{port}.log")
    try:
        warm = httpx.post(base + "/v1/search", params={"k": 1}, files={"file": ("q.png", big_png(256))}, timeout=120)
        if warm.status_code != 200:
            raise SystemExit(f"warm-up search: HTTP {warm.status_code} {warm.text[:200]}")
        time.sleep(1.0)
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        resting = memory(proc.pid)["vmrss_mb"]
        t0 = time.perf_counter()
        answers = burst(base, route, data)
        wall = time.perf_counter() - t0
        peak = memory(proc.pid)["vmhwm_mb"]
        alive = proc.poll() is None and httpx.get(base + "/readyz", timeout=10).status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)
    answered = all(a["status"] == 200 or (a["status"] in (413, 503) and a["reason"]) for a in answers)
    row = {
        "label": label,
        "route": route,
        "ceiling_mb": ceiling_mb,
        "resting_mb": resting,
        "peak_mb": peak,
        "peak_over_resting_mb": round(peak - resting, 1),
        "under_ceiling": peak <= resting + ceiling_mb,
        "every_request_answered": answered,
        "server_alive_after": alive,
        "statuses": sorted(f"{a['status']} {a['reason'] or ''}".strip() for a in answers),
        "answers": answers,
        "burst_s": round(wall, 2),
        "load_avg_1min": os.getloadavg()[0],
    }
    say(f"{label}: +{row['peak_over_resting_mb']:.0f} MB over {resting:.0f} MB resting, {row['statuses']}")
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="checkpoint folder")
    p.add_argument("--manifest", type=Path, default=REPO.parent / "shared/data/cxr-public/manifest.csv")
    p.add_argument("--side", type=int, default=8900)
    p.add_argument("--n-index", type=int, default=60)
    p.add_argument("--small-ceiling-mb", type=int, default=1024, help="a ceiling that fits one reduced decode")
    p.add_argument("--work", type=Path, default=Path("/tmp/cxr-upload-burst"))
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_") and k != "PYTHONPATH"}
    env |= {"CXR_DATA_DIR": str(args.work / "data"), "CXR_MODEL": str(args.model.resolve())}
    built = index_store(env, {"manifest": [small_store(args.work, args.manifest.resolve(), args.n_index)]})
    data = big_png(args.side)
    default = Settings.model_fields["api_decode_memory_mb"].default
    rows = [
        run_row("searches, default ceiling", "/v1/search", default, env, data, args),
        run_row("previews, default ceiling", "/v1/render", default, env, data, args),
        run_row("searches, small ceiling", "/v1/search", args.small_ceiling_mb, env, data, args),
    ]
    doc = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "cores": os.cpu_count(),
        "model": str(args.model),
        "store": built,
        "upload": {"side": args.side, "megapixels": round(args.side**2 / 1e6, 1), "png_kb": round(len(data) / 1024)},
        "concurrent": CONCURRENT,
        "decode_wait_s": Settings.model_fields["api_decode_wait_s"].default,
        "rule": "peak = VmHWM after the burst, reset to VmRSS just before it; one server per row",
        "rows": rows,
        "target_met": all(r["under_ceiling"] and r["every_request_answered"] and r["server_alive_after"] for r in rows),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\n{CONCURRENT} uploads of {doc['upload']['megapixels']} Mpx ({doc['upload']['png_kb']} KB PNG) at once:\n")
    print("| row | ceiling MB | resting MB | peak over resting MB | answers | burst s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        answers = ", ".join(f"{n}x {s}" for s, n in sorted({s: r["statuses"].count(s) for s in r["statuses"]}.items()))
        print(f"| {r['label']} | {r['ceiling_mb']:,} | {r['resting_mb']:,.0f} | {r['peak_over_resting_mb']:,.0f} | "
              f"{answers} | {r['burst_s']} |")  # fmt: skip
    verdict = "met" if doc["target_met"] else "missed"
    print(f"\ntarget (under the ceiling, every request answered, server alive): {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
