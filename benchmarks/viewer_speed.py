"""How long the viewer takes to answer, as a reader sees it: a real `cxr serve` process over the embedded store and a
real headless Chromium (the flags of the tests' harness, tests/api/browser.py) at 1366x768.

The store: N cxr-public films (spread over its manifest) indexed by `cxr index` with the checkpoint. Each round opens
a fresh tab on the viewer, waits for "ready", then:
- first search: choose a held-out film; time until its 12 cards show, every thumbnail loaded (render, search, facets
  and 12 thumbnails, as the viewer does them);
- repeat search: choose a second held-out film in the same tab; time until its 12 cards show, thumbnails loaded.
Every round uses films no other round used. Figures are the median (p50) over the rounds, with min and max.

    python -m benchmarks.viewer_speed --model runs/headline/lite1-45min     # 300 films, 10 rounds

Prints a table and writes benchmarks/results/viewer_speed.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import tests.api.conftest  # noqa: F401 - imported first, it loads tests.api.browser (they import each other)
from benchmarks.api_search import free_port, say, start_server
from tests.api.browser import CHROMIUM_FLAGS

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "viewer_speed.json"
DEFAULT_MODEL = REPO / "runs" / "headline" / "lite1-45min"
K = 12
DONE = """([name, k]) => document.getElementById('query-caption').textContent.startsWith(name + ' ·')
  && document.querySelectorAll('#grid .card').length === k
  && [...document.querySelectorAll('#grid .card img')].every((i) => i.dataset.loaded === '1')"""


def split_manifest(manifest: Path, films: int, held: int, out: Path) -> list[Path]:
    """A manifest of `films` rows spread over `manifest` (absolute paths) at `out`; returns `held` other films."""
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    step = max(1, len(rows) // (films + held))
    spread = rows[::step]
    chosen, rest = spread[:films], spread[films : films + held]
    for row in chosen:
        row["path"] = str((manifest.parent / row["path"]).resolve())
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    return [(manifest.parent / r["path"]).resolve() for r in rest]


def timed_search(tab, path: Path) -> float:
    """Seconds from choosing `path` to its K cards with every thumbnail loaded."""
    t0 = time.perf_counter()
    tab.set_input_files("#file-input", str(path))
    tab.wait_for_function(DONE, arg=[path.name, K], timeout=60_000)
    return time.perf_counter() - t0


def summary(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {"p50_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "n": len(ms)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="trained checkpoint folder")
    p.add_argument("--manifest", type=Path, default=REPO.parent / "shared/data/cxr-public/manifest.csv")
    p.add_argument("--films", type=int, default=300, help="films indexed")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--work", type=Path, default=Path("/tmp/cxr-viewer-speed"))
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is not installed (Debian package chromium)")
    from playwright.sync_api import sync_playwright

    model = args.model.resolve()
    shutil.rmtree(args.work, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env |= {"CXR_DATA_DIR": str(args.work / "data"), "CXR_MODEL": str(model)}
    queries = split_manifest(args.manifest.resolve(), args.films, 2 * args.rounds, args.work / "manifest.csv")
    cxr = str(Path(sys.executable).with_name("cxr"))
    say(f"indexing {args.films} films with {model}")
    t0 = time.perf_counter()
    subprocess.run([cxr, "index", "--manifest", str(args.work / "manifest.csv")], env=env, check=True, cwd=REPO)
    index_s = time.perf_counter() - t0
    port = free_port()
    server = start_server(env, port, args.work / "serve.log")
    first: list[float] = []
    repeat: list[float] = []
    loads = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS, headless=True)
            context = browser.new_context(viewport={"width": 1366, "height": 768})
            version = browser.version
            for rnd in range(args.rounds):
                loads.append(os.getloadavg()[0])
                tab = context.new_page()
                tab.goto(f"http://127.0.0.1:{port}/viewer/")
                tab.wait_for_function("document.getElementById('status').textContent.startsWith('ready')")
                first.append(timed_search(tab, queries[2 * rnd]))
                repeat.append(timed_search(tab, queries[2 * rnd + 1]))
                tab.close()
                say(f"round {rnd + 1}: first {first[-1] * 1000:.0f} ms, repeat {repeat[-1] * 1000:.0f} ms")
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
    doc = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "model": str(model.relative_to(REPO) if model.is_relative_to(REPO) else model),
        "indexed_films": args.films,
        "index_seconds": round(index_s, 1),
        "chromium": version,
        "viewport": "1366x768",
        "k": K,
        "cores": os.cpu_count(),
        "load_avg_1min_at_round_start": loads,
        "rule": f"median over {args.rounds} rounds, each a fresh tab and two held-out cxr-public films",
        "first_search": summary(first),
        "repeat_search": summary(repeat),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\n{args.films} films, {doc['model']}, Chromium {version}, load {min(loads):.1f}-{max(loads):.1f}")
    print("| viewer search (12 cards, thumbnails loaded) | p50 ms | min ms | max ms | rounds |")
    print("|---|---|---|---|---|")
    for name, key in (("first search (fresh tab)", "first_search"), ("repeat search (same tab)", "repeat_search")):
        s = doc[key]
        print(f"| {name} | {s['p50_ms']:.0f} | {s['min_ms']:.0f} | {s['max_ms']:.0f} | {s['n']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
