"""How fast the command line answers: each command as a user runs it (a fresh `cxr` process), beside the same run's
`python -c 'import torch'` as the floor.

Rows: `cxr --help`, the listing commands (`collections`, `status`, `failures`), `cxr search` with a warm model cache
(the compiled OpenVINO model on disk, services.embedding.openvino_cache) and with a cold one (the cache removed
first, so it converts and compiles as a first run does). The store: a fresh embedded store in --work, N cxr-public
images indexed with the checkpoint (which also warms the cache). Rounds alternate between the commands (the order
reversed every other round) so all share the machine's load; each row's figure is the median over every run.
Children are pinned to one CPU (--cpu, default the last one) with one inference thread, as "on an idle core" means;
Redis is pointed at a free port, so `cxr status` reports it down at once, as it does when no worker runs.
Also records, once, the import time `python -X importtime` reports for `cxr collections` and a warm `cxr search`,
and which of torch, transformers and openvino each imported.

    python -m benchmarks.cli_startup --model runs/hybrid128 [--rounds 5 --per-round 3 --n-index 200]

Targets (issue 18): `cxr collections` <= 0.5 s; a warm `cxr search` <= 2 s. Prints a table and writes
benchmarks/results/cli_startup.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "cli_startup.json"
FLOOR = "python -c 'import torch'"
TARGETS_S = {"cxr collections": 0.5, "cxr search (warm cache)": 2.0}
WATCHED = ("torch", "transformers", "openvino")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cxr_argv() -> list[str]:
    """The `cxr` console script beside this interpreter (what a user runs), else `python -m cli.main`."""
    script = Path(sys.executable).with_name("cxr")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick_rows(manifest: Path, n: int) -> list[dict[str, str]]:
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    step = max(1, len(rows) // n)
    return rows[::step][:n]


def run(argv: list[str], env: dict[str, str], cpu: int | None) -> float:
    """Seconds from start to exit of one process; a failure stops the benchmark with its stderr."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        argv,
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None,
        timeout=600,
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return seconds


def import_profile(argv: list[str], env: dict[str, str], cpu: int | None) -> dict[str, object]:
    """`python -X importtime` on one run: the summed top-level import time and which watched modules loaded."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cli.main", *argv],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None,
        timeout=600,
    )
    total_us, loaded = 0, set()
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|", 2)
        if not cumulative.strip().isdigit():
            continue  # the header
        if not name.startswith("  "):  # a top-level import: its cumulative time holds its children's
            total_us += int(cumulative)
        if name.strip() in WATCHED:
            loaded.add(name.strip())
    return {"exit": proc.returncode, "imports_s": round(total_us / 1e6, 3), "loaded": sorted(loaded)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="trained checkpoint folder")
    p.add_argument("--manifest", type=Path, default=REPO.parent / "shared/data/cxr-public/manifest.csv")
    p.add_argument("--n-index", type=int, default=200, help="images indexed into the store first")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--per-round", type=int, default=3, help="runs of each command per round (cold search: 1)")
    p.add_argument("--cpu", default="last", help="CPU to pin every timed process to: an index, 'last' or 'none'")
    p.add_argument("--backend", default="openvino", help="CXR_INFERENCE_BACKEND for the children")
    p.add_argument("--work", type=Path, default=Path("/tmp/cxr-cli-startup"))
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    cpu = None if args.cpu == "none" else cpus[-1] if args.cpu == "last" else int(args.cpu)
    model, manifest = args.model.resolve(), args.manifest.resolve()
    data_dir = args.work / "data"
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env |= {
        "CXR_DATA_DIR": str(data_dir),
        "CXR_MODEL": str(model),
        "CXR_INFERENCE_BACKEND": args.backend,
        "CXR_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens: as when no worker runs
    }
    if cpu is not None:
        env["CXR_TORCH_THREADS"] = "1"  # one core: one inference thread

    rows = pick_rows(manifest, args.n_index)
    sample = args.work / "manifest.csv"
    with sample.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "path": str(manifest.parent / r["path"])} for r in rows)
    query = manifest.parent / rows[0]["path"]
    cxr = cxr_argv()
    say(f"indexing {len(rows)} images into {data_dir} (also converts and caches the model)")
    index_s = run([*cxr, "index", "--manifest", str(sample)], env, cpu=None)
    cache = data_dir / "cache" / "openvino"

    commands: dict[str, list[str]] = {
        FLOOR: [sys.executable, "-c", "import torch"],
        "python -c pass": [sys.executable, "-c", "pass"],
        "cxr --help": [*cxr, "--help"],
        "cxr collections": [*cxr, "collections"],
        "cxr status": [*cxr, "status"],
        "cxr failures": [*cxr, "failures"],
        "cxr search (warm cache)": [*cxr, "search", str(query), "--k", "10"],
        "cxr search (cold cache)": [*cxr, "search", str(query), "--k", "10"],
    }
    for name, cmd in commands.items():  # warm-up, not counted: file cache, .pyc, the model cache
        run(cmd, env, cpu)
        say(f"warm-up {name}: ok")
    times: dict[str, list[float]] = {name: [] for name in commands}
    loads = []
    for rnd in range(args.rounds):
        loads.append(round(os.getloadavg()[0], 2))
        order = list(commands) if rnd % 2 == 0 else list(reversed(commands))
        for name in order:
            for _ in range(1 if "cold" in name else args.per_round):
                if "cold" in name:
                    shutil.rmtree(cache, ignore_errors=True)  # this run converts, compiles and rewrites it
                times[name].append(run(commands[name], env, cpu))
        say(f"round {rnd + 1}: " + ", ".join(f"{n} {statistics.median(t):.2f} s" for n, t in times.items()))

    floor = statistics.median(times[FLOOR])
    table = {}
    for name, ts in times.items():
        p50 = statistics.median(ts)
        target = TARGETS_S.get(name)
        table[name] = {
            "argv": commands[name][len(cxr) :] if name.startswith("cxr") else commands[name][1:],
            "runs": len(ts),
            "p50_s": round(p50, 3),
            "min_s": round(min(ts), 3),
            "max_s": round(max(ts), 3),
            "ratio_to_floor": round(p50 / floor, 3),
            "target_s": target,
            "target_met": None if target is None else p50 <= target,
            "times_s": [round(t, 3) for t in ts],
        }
    imports = {
        "cxr collections": import_profile(["collections"], env, cpu),
        "cxr search (warm cache)": import_profile(["search", str(query), "--k", "10"], env, cpu),
    }
    doc = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "model": str(model),
        "inference_backend": args.backend,
        "indexed_points": len(rows),
        "index_seconds": round(index_s, 2),
        "cores": os.cpu_count(),
        "pinned_cpu": cpu,
        "inference_threads": env.get("CXR_TORCH_THREADS", "default"),
        "rounds": args.rounds,
        "per_round": args.per_round,
        "load_avg_1min_at_round_start": loads,
        "floor": FLOOR,
        "floor_p50_s": round(floor, 3),
        "rule": "median wall seconds of a fresh process, start to exit, over alternating rounds",
        "rows": table,
        "import_time": imports,
    }
    print(f"{'command':<28} {'p50 s':>7} {'min s':>7} {'max s':>7} {'x floor':>8} {'target':>7}  met")
    for name, r in table.items():
        target = "" if r["target_s"] is None else f"{r['target_s']:.1f}"
        met = "" if r["target_met"] is None else ("yes" if r["target_met"] else "NO")
        print(
            f"{name:<28} {r['p50_s']:>7.2f} {r['min_s']:>7.2f} {r['max_s']:>7.2f} {r['ratio_to_floor']:>8.2f}"
            f" {target:>7}  {met}"
        )
    for name, prof in imports.items():
        print(f"-X importtime {name}: {prof['imports_s']:.2f} s of imports; loaded {prof['loaded'] or 'none'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
