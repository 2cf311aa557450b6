"""Throughput through the background queue against inline `cxr index` and the encoder alone, on N real files.

Rows, in one run, on the same N cxr-public images:
- encoder alone: pre-decoded arrays through BatchEncoder (the model's ceiling);
- inline: the Ingestor `cxr index` runs (read, hash, decode in threads, encode, payload, upsert, source refs
  recorded in a ledger as `cxr index` does) into a fresh embedded store;
- queue, 1 and 2 embed processes: `cxr worker` subprocesses (embed xN + the single index writer) on a real Redis,
  from `submit` (ledger records + dispatch) until the ledger says all N are indexed. Each worker is warmed up first
  (model loaded in its processes), as a long-running worker is.
Every process uses `--threads` torch threads (default 1, the worker default) and the same inference back end
(`--backend`, default the worker's: CXR_INFERENCE_BACKEND). Uses a trained checkpoint if given or
found under DATA_DIR/models/default, else a random-init vit-tiny at 128 px (throughput does not depend on training).
Receiver rows (instances/s over 1/4/8 associations, C-STORE-to-searchable latency) belong to the PACS benchmark:
see `receiver_rows()`. Search p50 at 100k points without a manual optimize: benchmarks/store_scale.py.

Run `python -m benchmarks.queue [--n 1000]`; prints a table and writes benchmarks/results/queue.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "queue.json"


def pick_files(cxr_public: Path, n: int) -> list[Path]:
    import csv

    with (cxr_public / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    step = max(1, len(rows) // n)
    return [cxr_public / r["path"] for r in rows[::step][:n]]


def checkpoint(arg: Path | None, tmp: Path) -> tuple[Path, str]:
    from services.config import Settings
    from services.embedding import create_encoder, save_checkpoint

    if arg:
        return arg, f"checkpoint {arg}"
    default = Settings().model_path
    if (default / "config.json").exists():
        return default, f"trained checkpoint {default}"
    path = save_checkpoint(create_encoder("vit-tiny", image_size=128, seed=0), tmp / "vit-tiny-128")
    return path, "random-init vit-tiny at 128 px (no trained checkpoint found)"


def _encoder(model: Path, batch: int, backend: str, tmp: Path):  # noqa: ANN202 - a BatchEncoder
    """The encoder every row uses: the same back end as the worker (CXR_INFERENCE_BACKEND), converted once."""
    from services.embedding import BatchEncoder

    return BatchEncoder.from_checkpoint(
        model, batch_size=batch, backend=backend or None, cache_root=tmp / "cache" / "models"
    )


def encoder_alone(model: Path, files: list[Path], batch: int, backend: str, tmp: Path) -> float:
    from services.imaging import decode_image, to_model_input

    enc = _encoder(model, batch, backend, tmp)
    arrays = np.stack([to_model_input(decode_image(f).pixels, enc.image_size) for f in files])
    enc.encode(arrays[:batch])  # warm-up
    t0 = time.perf_counter()
    enc.encode(arrays)
    return len(files) / (time.perf_counter() - t0)


def inline(model: Path, files: list[Path], batch: int, workers: int, backend: str, tmp: Path) -> tuple[float, dict]:
    from services.index import QdrantEdgeStore
    from services.pipeline import IngestOptions, Ingestor, build_items
    from services.pipeline.ledger import Ledger

    enc = _encoder(model, batch, backend, tmp)
    enc.encode(np.zeros((2, enc.image_size, enc.image_size), np.float32) + 0.5)  # warm-up
    store = QdrantEdgeStore(tmp / f"inline-{time.monotonic_ns()}")
    store.create_collection("bench", enc.dim)  # once per collection (~1-2 s here); the queue rows' warm-up pays it
    opts = IngestOptions(collection="bench", batch_size=batch, decode_workers=workers)
    refs = Ledger(tmp / f"inline-ledger-{time.monotonic_ns()}.sqlite3").put_refs  # as `cxr index` records them
    report = Ingestor(enc, store, opts, salt=b"bench-salt", refs=refs).run(build_items(files)[0])
    store.close()
    assert report.indexed == len(files), report.failed[:3]
    return report.images_per_s, {k: round(v, 2) for k, v in report.stage_seconds.items()}


def _env(
    tmp: Path, redis_url: str, model: Path, threads: int, batch: int, workers: int, qbatch: int, backend: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(
        CXR_DATA_DIR=str(tmp),
        CXR_REDIS_URL=redis_url,
        CXR_MODEL=str(model),
        CXR_TORCH_THREADS=str(threads),
        CXR_QUEUE_BATCH_SIZE=str(qbatch),
        CXR_BATCH_SIZE=str(batch),
        CXR_DECODE_WORKERS=str(workers),
        CXR_SWEEP_INTERVAL_S="1",
        CXR_PATIENT_SALT="bench-salt",
        CXR_INFERENCE_BACKEND=backend,
    )
    return env


def _wait_indexed(ledger_path: Path, n: int, timeout: float) -> None:
    from services.pipeline.ledger import Ledger

    ledger = Ledger(ledger_path)
    deadline = time.monotonic() + timeout
    while ledger.counts()["indexed"] < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {ledger.counts()} after {timeout:.0f} s")
        time.sleep(0.05)


def queue(
    model: Path,
    files: list[Path],
    warm: list[Path],
    concurrency: int,
    args: argparse.Namespace,
    tmp: Path,
    redis_url: str,
) -> float:
    from services.config import Settings
    from services.pipeline.sources import build_items
    from services.pipeline.submission import submit
    from workers.dispatch import make_publish

    tmp.mkdir(parents=True, exist_ok=True)
    data = tmp / f"queue-{concurrency}"
    env = _env(
        data, redis_url, model, args.threads, args.batch_size, args.decode_workers, args.queue_batch_size, args.backend
    )
    settings = Settings(**{k[4:].lower(): v for k, v in env.items() if k.startswith("CXR_")})
    log = (tmp / f"worker-{concurrency}.log").open("wb")
    cmd = [sys.executable, "-m", "cli.main", "worker", "-c", str(concurrency), "--loglevel", "WARNING"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        submit(
            settings, build_items(warm)[0], publish=make_publish(settings)
        )  # load the model in the worker's processes
        _wait_indexed(settings.ledger_path, len(warm), 300)
        t0 = time.perf_counter()
        submit(settings, build_items(files)[0], publish=make_publish(settings))
        _wait_indexed(settings.ledger_path, len(warm) + len(files), 600)
        return len(files) / (time.perf_counter() - t0)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


def receiver_rows() -> dict:
    """Hook for the PACS engineer: instances/s over 1/4/8 associations and C-STORE-to-searchable p50/p95,
    measured against the same `cxr worker`; returns {} until that benchmark exists."""
    try:
        from benchmarks.receiver import run as run_receiver  # type: ignore[import-not-found]
    except ImportError:
        return {}
    return run_receiver()


def main() -> None:
    from services.config import Settings

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cxr-public")
    p.add_argument("--model", type=Path)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--decode-workers", type=int, default=2)
    p.add_argument("--queue-batch-size", type=int, default=Settings().queue_batch_size, help="images per embed task")
    p.add_argument(
        "--backend",
        default=Settings().inference_backend or "",
        help="inference back end for every row (default: the worker's, CXR_INFERENCE_BACKEND; empty = eager)",
    )
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; each row keeps its best")
    p.add_argument("--receiver", action=argparse.BooleanOptionalAction, default=True, help="run benchmarks.receiver")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from tests.services import RedisServer

    chosen = pick_files(args.data, args.n + 4 * args.batch_size)
    files, warm = chosen[: args.n], chosen[args.n :]
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        model, model_note = checkpoint(args.model, tmp)
        redis = RedisServer(tmp / "redis").start()
        rounds: dict[str, list[float]] = {}
        stages: list[dict] = []
        loads: list[float] = []  # 1-minute load average as each round starts
        try:
            for r in range(args.rounds):  # the machine is shared: rows alternate, each keeps its best round
                loads.append(round(os.getloadavg()[0], 2))
                alone = encoder_alone(model, files, args.batch_size, args.backend, tmp)
                rounds.setdefault("encoder alone", []).append(alone)
                rate, stage_s = inline(model, files, args.batch_size, args.decode_workers, args.backend, tmp)
                rounds.setdefault("inline cxr index", []).append(rate)
                stages.append(stage_s)
                for c in (1, 2):
                    name = f"queue, {c} embed process" + ("es" if c > 1 else "")
                    rounds.setdefault(name, []).append(queue(model, files, warm, c, args, tmp / f"r{r}", redis.url))
        finally:
            redis.stop()
        rows = {name: max(rates) for name, rates in rounds.items()}
    same_round = {  # ratios within each round (the rows of one round ran minutes apart, under similar load)
        "inline / encoder": [i / e for i, e in zip(rounds["inline cxr index"], rounds["encoder alone"], strict=True)],
        "queue x1 / inline": [
            q / i for q, i in zip(rounds["queue, 1 embed process"], rounds["inline cxr index"], strict=True)
        ],
    }
    ratios = {
        "inline / encoder": rows["inline cxr index"] / rows["encoder alone"],
        "queue x1 / inline": rows["queue, 1 embed process"] / rows["inline cxr index"],
        "queue x2 / queue x1": rows["queue, 2 embed processes"] / rows["queue, 1 embed process"],
    }
    print(
        f"{len(files)} real images, {model_note}, batch {args.batch_size}, {args.threads} torch thread(s)/process,"
        f" {args.decode_workers} decode threads, back end {args.backend or 'eager'},"
        f" best of {args.rounds} alternating rounds,"
        f" load avg {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (at each round's start: {loads})"
    )
    print(f"{'row':28} {'images/s':>9}")
    for name, rate in rows.items():
        print(f"{name:28} {rate:9.1f}")
    for name, r in ratios.items():
        target = {"inline / encoder": 0.8, "queue x1 / inline": 0.8}.get(name)
        print(f"{name:28} {r:9.2f}" + (f"  (target >= {target})" if target else ""))
    for name, rs in same_round.items():
        print(f"{name + ' by round':28} " + " ".join(f"{r:.2f}" for r in rs))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "n": len(files),
        "model": model_note,
        "batch_size": args.batch_size,
        "torch_threads_per_process": args.threads,
        "decode_workers": args.decode_workers,
        "inference_backend": args.backend or "eager",
        "queue_batch_size": args.queue_batch_size,
        "cores": os.cpu_count(),
        "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
        "load_avg_1min_at_round_start": loads,
        "rule": f"best of {args.rounds} alternating rounds, the same for every row",
        "images_per_s": {k: round(v, 1) for k, v in rows.items()},
        "rounds_images_per_s": {k: [round(v, 1) for v in vs] for k, vs in rounds.items()},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "ratios_same_round": {k: [round(v, 3) for v in vs] for k, vs in same_round.items()},
        "inline_stage_seconds": stages,
        "receiver": receiver_rows() if args.receiver else "skipped (--no-receiver)",
        "search_at_100k": "see benchmarks/store_scale.py and its results",
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
