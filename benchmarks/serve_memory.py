"""`cxr serve` memory: the resident set (VmRSS of /proc/PID/status) of a real server over a small embedded store,
idle after its first search, then after 100 and after N (default 1,000) mixed requests, for today's code and this
tree in the same run.

The store: N cxr-public images and pydicom-data's chest CRs (RG1, 1955 x 1841), indexed by `cxr index` with the
checkpoint (which also warms the compiled OpenVINO model, as any second start finds it). The mix, one request at a
time, in a fixed cycle of 20: 13 searches with cxr-public JPEGs (one with a label filter), a preview (`/v1/render`),
a thumbnail, an explanation of two indexed points and one of an uploaded JPEG (relevance), and two large uploads
(a search and a preview, or a cropped search, which decodes in full) cycling through RG1 in explicit VR and JPEG
2000 and 3,000 px PNG and DICOM (explicit VR and JPEG 2000) files built as benchmarks/decode_memory.py builds them.

"today" is the code before issue 18's memory work, run from a copy of its `services`, `cli` and `workers` folders
(--baseline-tree, put first on PYTHONPATH); without one, only this tree is measured. `--variant` adds more runs,
e.g. an allocator setting through glibc's environment: `--variant "today, 2 arenas=baseline:MALLOC_ARENA_MAX=2"`;
the pseudo-variable COLD=1 starts that server on a cold model cache (removed first), as a first start does.

    python -m benchmarks.serve_memory --model runs/headline/lite0-45min-label_source --baseline-tree /tmp/cxr-today

Targets (issue 18): idle RSS after the first search at most 0.7x today's; RSS after 1,000 mixed requests within
10% of RSS after 100. Prints a table and writes benchmarks/results/serve_memory.json. The default run takes about
3 minutes on an idle 2-core machine, 13 at a load of 9 (each server's mix_s is in the JSON); --requests scales it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.api_search import free_port, say, start_server

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "serve_memory.json"
TARGET_IDLE_RATIO = 0.7
TARGET_GROWTH = 0.10
CYCLE = 20  # the mix repeats every 20 requests: see the module docstring
FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
LIBS = {"torch": "libtorch_cpu", "openvino": "libopenvino.so"}


def memory(pid: int) -> dict[str, Any]:
    """VmRSS, VmHWM, RssAnon and RssFile in MB, and which back ends' libraries are mapped."""
    out: dict[str, Any] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in FIELDS:
            out[name.lower() + "_mb"] = round(int(value.split()[0]) / 1024, 1)
    maps = Path(f"/proc/{pid}/maps").read_text()
    out["mapped"] = sorted(k for k, lib in LIBS.items() if lib in maps)
    return out


def build_files(work: Path, manifest: Path, n_index: int, n_queries: int, side: int) -> dict[str, list[Path]]:
    """The indexed images (a manifest of n_index cxr-public rows plus the RG1 CRs), the JPEG queries (other
    cxr-public rows) and the large uploads."""
    import data_store  # the pydicom-data package

    from benchmarks.decode_memory import _files

    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    step = max(1, len(rows) // (n_index + n_queries))
    picked = rows[::step][: n_index + n_queries]
    folder = work / "index"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with (folder / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in picked[:n_index]:
            writer.writerow(row | {"path": str(manifest.parent / row["path"])})
        rg1 = Path(data_store.__file__).parent / "data"
        for name in ("RG1_UNCI.dcm", "RG1_J2KR.dcm"):
            shutil.copy(rg1 / name, folder / name)
            writer.writerow(dict.fromkeys(rows[0], "") | {"path": name, "label": "dicom-cr"})
    big_dir = work / "large"
    if not (big_dir / "done").exists():
        shutil.rmtree(big_dir, ignore_errors=True)
        big_dir.mkdir(parents=True)
        made = _files(side, big_dir)
        for key in ("png-16bit", "dicom-16bit-window", "dicom-j2k"):
            shutil.copy(made[key], big_dir / f"{key}{made[key].suffix}")
        for path in made.values():
            path.unlink()
        (big_dir / "done").write_text("")
    large = [rg1 / "RG1_UNCR.dcm", rg1 / "RG1_J2KI.dcm", *sorted(p for p in big_dir.iterdir() if p.name != "done")]
    return {
        "manifest": [folder / "manifest.csv"],
        "queries": [manifest.parent / row["path"] for row in picked[n_index:]],
        "large": large,
    }


def index_store(env: dict[str, str], files: dict[str, list[Path]]) -> dict[str, Any]:
    manifest = files["manifest"][0]
    cmd = [str(Path(sys.executable).with_name("cxr")), "index", "--manifest", str(manifest)]
    t0 = time.perf_counter()
    done = subprocess.run([*cmd, "--json"], env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"cxr index failed: {done.stderr[-2000:]}")
    report = json.loads(done.stdout)
    return {"indexed": report.get("indexed"), "seconds": round(time.perf_counter() - t0, 1)}


class Mix:
    """The request cycle (see the module docstring); `ids` are indexed points seen in search hits."""

    def __init__(self, client: httpx.Client, files: dict[str, list[Path]]) -> None:
        self.client, self.queries, self.large = client, files["queries"], files["large"]
        self.ids: list[str] = []
        self.data: dict[Path, bytes] = {}
        self.statuses: dict[str, int] = {}

    def _bytes(self, path: Path) -> bytes:
        if path not in self.data:
            self.data[path] = path.read_bytes()
        return self.data[path]

    def _post(self, route: str, path: Path, **params: Any) -> httpx.Response:
        return self.client.post(route, params=params, files={"file": ("q", self._bytes(path))})

    def request(self, i: int) -> str:
        slot, turn = i % CYCLE, i // CYCLE
        jpeg = self.queries[i % len(self.queries)]
        large = self.large[turn % len(self.large)]
        if slot == 10:
            kind, r = "render", self._post("/v1/render", jpeg)
        elif slot == 12 and self.ids:
            kind, r = "thumbnail", self.client.get(f"/v1/points/{self.ids[turn % len(self.ids)]}/thumbnail")
        elif slot == 14 and len(self.ids) > 1:
            a, b = self.ids[turn % len(self.ids)], self.ids[(turn * 7 + 1) % len(self.ids)]
            kind, r = "explain", self.client.get("/v1/explain", params={"query": a, "result": b})
        elif slot == 16:
            kind, r = "large search", self._post("/v1/search", large, k=10)
        elif slot == 17:
            if turn % 2:
                kind, r = "large search, cropped", self._post("/v1/search", large, k=10, crop="0.05,0.05,0.95,0.95")
            else:
                kind, r = "large render", self._post("/v1/render", large)
        elif slot == 19 and self.ids:
            kind, r = "explain upload", self._post("/v1/explain", jpeg, result=self.ids[turn % len(self.ids)])
        else:
            params = {"k": 10} | ({"filter": "label=normal"} if slot == 18 else {})
            kind, r = "search", self._post("/v1/search", jpeg, **params)
            if r.status_code == 200:
                for hit in r.json()["hits"]:
                    if hit["id"] not in self.ids and len(self.ids) < 500:
                        self.ids.append(hit["id"])
        key = f"{kind} {r.status_code}"
        self.statuses[key] = self.statuses.get(key, 0) + 1
        if r.status_code != 200:
            say(f"request {i} ({kind}): HTTP {r.status_code} {r.text[:200]}")
        return kind


def settle(pid: int, seconds: float) -> dict[str, Any]:
    time.sleep(seconds)
    return memory(pid)


def run_variant(label: str, env: dict[str, str], files: dict[str, list[Path]], args: argparse.Namespace) -> dict:
    """One server: RSS when ready, idle after its first search, after the first explanation, after 100 and after
    args.requests mixed requests (each reading after a pause of args.settle_s), and every 50 requests."""
    port = free_port()
    log = args.work / f"serve-{label.replace(' ', '_').replace(',', '')}.log"
    t0 = time.perf_counter()
    proc = start_server(env, port, log)
    out: dict[str, Any] = {"label": label, "ready_s": round(time.perf_counter() - t0, 1)}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
            out["ready"] = settle(proc.pid, args.settle_s)
            mix = Mix(client, files)
            mix.request(0)
            out["idle_after_first_search"] = settle(proc.pid, args.settle_s)
            series, t1 = [], time.perf_counter()
            for i in range(1, args.requests + 1):
                kind = mix.request(i)
                if kind == "explain" and "after_first_explain" not in out:
                    out["after_first_explain"] = memory(proc.pid) | {"request": i}
                if i in (100, args.requests):
                    out[f"after_{i}"] = settle(proc.pid, args.settle_s)
                if i % 50 == 0:
                    series.append([i, memory(proc.pid)["vmrss_mb"]])
                if i % 250 == 0:
                    say(f"{label}: {i} requests, RSS {series[-1][1]:.0f} MB")
            out["mix_s"] = round(time.perf_counter() - t1, 1)
            out["series"] = series
            out["statuses"] = mix.statuses
    finally:
        proc.terminate()
        proc.wait(30)
    idle, after_100, after_n = (out[k]["vmrss_mb"] for k in ("idle_after_first_search", "after_100",
                                                            f"after_{args.requests}"))  # fmt: skip
    out["growth_100_to_n"] = round(after_n / after_100 - 1, 4)
    say(f"{label}: idle {idle:.0f} MB, after 100 {after_100:.0f} MB, after {args.requests} {after_n:.0f} MB")
    return out


def parse_variant(text: str) -> tuple[str, str, dict[str, str]]:
    """`LABEL=TREE[:K=V,...]`, TREE being `this` or `baseline`."""
    label, _, rest = text.partition("=")
    tree, _, env = rest.partition(":")
    if tree not in ("this", "baseline"):
        raise SystemExit(f"--variant {text!r}: the tree is `this` or `baseline`")
    return label, tree, dict(kv.split("=", 1) for kv in env.split(",") if kv)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="trained checkpoint folder")
    p.add_argument("--manifest", type=Path, default=REPO.parent / "shared/data/cxr-public/manifest.csv")
    p.add_argument("--baseline-tree", type=Path, help="a copy of today's services/, cli/ and workers/")
    p.add_argument("--variant", action="append", default=[], help="LABEL=this|baseline[:ENV=VALUE,...]")
    p.add_argument("--requests", type=int, default=1000, help="mixed requests per server (at least 100)")
    p.add_argument("--n-index", type=int, default=300, help="cxr-public images indexed (plus 2 RG1 CRs)")
    p.add_argument("--n-queries", type=int, default=200, help="other cxr-public images used as queries")
    p.add_argument("--side", type=int, default=3000, help="side of the large PNG and DICOM uploads")
    p.add_argument("--settle-s", type=float, default=2.0, help="pause before each reading")
    p.add_argument("--work", type=Path, default=Path("/tmp/cxr-serve-memory"))
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.requests < 100:
        raise SystemExit("--requests must be at least 100")
    args.work.mkdir(parents=True, exist_ok=True)
    data_dir = args.work / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_") and k != "PYTHONPATH"}
    env |= {"CXR_DATA_DIR": str(data_dir), "CXR_MODEL": str(args.model.resolve())}
    files = build_files(args.work, args.manifest.resolve(), args.n_index, args.n_queries, args.side)
    say(f"indexing {args.n_index} cxr-public images and 2 RG1 CRs into {data_dir}")
    built = index_store(env, files)
    variants = [parse_variant(v) for v in args.variant]
    if args.baseline_tree:
        variants.insert(0, ("today", "baseline", {}))
    variants.insert(1 if args.baseline_tree else 0, ("this tree", "this", {}))
    runs = []
    for label, tree, extra in variants:
        cold = extra.pop("COLD", "") == "1"
        if cold:
            shutil.rmtree(data_dir / "cache" / "openvino", ignore_errors=True)
        run_env = env | extra
        if tree == "baseline":
            if not args.baseline_tree:
                raise SystemExit(f"variant {label!r} needs --baseline-tree")
            run_env["PYTHONPATH"] = str(args.baseline_tree.resolve())
        loads = os.getloadavg()[0]
        run = run_variant(label, run_env, files, args)
        runs.append(run | {"tree": tree, "env": extra, "cold_cache": cold, "load_avg_1min": loads})
    doc = report(runs, args, built)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print_table(doc)
    return 0


def report(runs: list[dict], args: argparse.Namespace, built: dict[str, Any]) -> dict[str, Any]:
    by = {r["label"]: r for r in runs}
    doc: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "model": str(args.model),
        "cores": os.cpu_count(),
        "store": built | {"points": args.n_index + 2},
        "requests": args.requests,
        "large_side": args.side,
        "rule": f"VmRSS read {args.settle_s:g} s after the named request; one server per row, one request at a time",
        "runs": runs,
    }
    if "today" in by:
        now, today = by["this tree"], by["today"]
        idle = now["idle_after_first_search"]["vmrss_mb"] / today["idle_after_first_search"]["vmrss_mb"]
        doc["targets"] = {
            "idle_ratio": round(idle, 3),
            "idle_ratio_target": TARGET_IDLE_RATIO,
            "idle_met": idle <= TARGET_IDLE_RATIO,
            "growth": now["growth_100_to_n"],
            "growth_target": TARGET_GROWTH,
            "growth_met": abs(now["growth_100_to_n"]) <= TARGET_GROWTH,
        }
    return doc


def print_table(doc: dict[str, Any]) -> None:
    n = doc["requests"]
    print(f"\n| code | ready MB | idle after 1st search MB | after 100 MB | after {n:,} MB | growth | peak MB |")
    print("|---|---|---|---|---|---|---|")
    for r in doc["runs"]:
        cells = [r[k]["vmrss_mb"] for k in ("ready", "idle_after_first_search", "after_100", f"after_{n}")]
        peak = r[f"after_{n}"]["vmhwm_mb"]
        print(f"| {r['label']} | " + " | ".join(f"{c:,.0f}" for c in cells) + f" | {r['growth_100_to_n']:+.1%} | "
              f"{peak:,.0f} |")  # fmt: skip
    if "targets" in doc:
        t = doc["targets"]
        print(f"\nidle after the first search: {t['idle_ratio']:.2f}x today's (target <= {TARGET_IDLE_RATIO}x); "
              f"growth 100 -> {n:,}: {t['growth']:+.1%} (target within {TARGET_GROWTH:.0%})")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
