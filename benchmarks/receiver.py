"""The DICOM receiver: instances/s over 1, 4 and 8 parallel associations, and latency from C-STORE to searchable.

Rows, in one run, on DX instances built around real cxr-public JPEGs (JPEG baseline pixel data, ~10-40 kB each):
- durability floor: `Intake.accept` alone in one thread (parse, spool write with fsync + rename + directory fsync,
  ledger commit with synchronous=FULL): the most a receiver that acknowledges only durable data can do here;
- receiver, 1/4/8 associations: `cxr dicom-listen` in its own process, pynetdicom senders in 1/4/8 processes, each
  with its own association (set-up included) and TCP_NODELAY (as DCMTK senders; without it Nagle and delayed ACKs
  cost ~40 ms per C-STORE: 17/s instead of 80/s), new UIDs every row; instances/s = all instances / wall time;
- Orthanc push: Orthanc (DCMTK inside, as most PACS and modalities) sends the same number to the receiver in one
  store job (one association), the way a hospital PACS forwards; baseline in the same run: the same push into a
  second Orthanc (which also answers only after storing and indexing);
- latency: with Redis and `cxr worker` running (embed x1 + the index writer, warmed up), instances are sent one
  every `--gap` seconds; latency = the ledger's indexed_at (the point is upserted and searchable) minus the moment
  the C-STORE success came back. p50/p95 over `--latency-n` instances. The worker embeds with `--model DIR` (a
  trained checkpoint folder; default Settings.model_path, else a random-init vit-tiny) on `--backend` (default
  Settings.inference_backend, the back end the service runs); the JSON records the checkpoint's id, shape and image
  size, the back end, and the load average before and after the run.

Run `python -m benchmarks.receiver [--model DIR]`; prints a table and writes benchmarks/results/receiver.json.
`run()` is what benchmarks/queue.py calls for its receiver section.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "receiver.json"
DATA = REPO.parent / "shared" / "data" / "cxr-public"


def build(folder: Path, jpegs: list[Path], seed: str) -> list[Path]:
    from tests.pacs.dicom_factory import dx_from_jpeg, save

    return [save(dx_from_jpeg(j, i, seed=seed), folder) for i, j in enumerate(jpegs)]


def _env(data_dir: Path, **extra: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(
        {
            "CXR_DATA_DIR": str(data_dir),
            "CXR_SPOOL_MIN_FREE_MB": "0",
            "CXR_PATIENT_SALT": "bench",
            "PYTHONPATH": str(REPO),
            "CXR_TORCH_THREADS": "1",
            "CXR_STORE_LINGER_S": "0.2",
        }
    )
    env.update({f"CXR_{k.upper()}": str(v) for k, v in extra.items()})
    return env


def _start_receiver(env: dict[str, str], log: Path, *, dispatch: bool) -> tuple[subprocess.Popen, int]:
    from tests.pacs.dicom_factory import echo
    from tests.services import free_port, wait_for

    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "cli.main",
        "dicom-listen",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--allow-aet",
        "BENCH,ORTHANC",
        "--dispatch" if dispatch else "--no-dispatch",
    ]
    with log.open("ab") as fh:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=fh, stderr=fh, start_new_session=True)
    wait_for(lambda: echo("127.0.0.1", port, called="CXR", calling="BENCH"), timeout=30, what="receiver")
    return proc, port


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _send_chunk(args: tuple[list[str], int]) -> int:
    from tests.pacs.dicom_factory import send

    paths, port = args
    return sum(
        1 for s in send([Path(p) for p in paths], "127.0.0.1", port, called="CXR", calling="BENCH").values() if s == 0
    )


def durability_floor(files: list[Path], tmp: Path) -> float:
    from services.pacs.intake import Intake
    from services.pacs.spool import Spool
    from services.pipeline.ledger import Ledger

    intake = Intake(Spool(tmp / "spool", min_free_mb=0), Ledger(tmp / "ledger.sqlite3"), collection="cxr")
    blobs = [f.read_bytes() for f in files]
    t0 = time.perf_counter()
    ok = sum(intake.accept(b, origin="bench").ok for b in blobs)
    assert ok == len(blobs)
    return len(blobs) / (time.perf_counter() - t0)


def receiver_rate(files: list[Path], parallel: int, tmp: Path) -> float:
    proc, port = _start_receiver(_env(tmp / f"rx{parallel}"), tmp / f"rx{parallel}.log", dispatch=False)
    try:
        chunks = [([str(p) for p in files[i::parallel]], port) for i in range(parallel)]
        with mp.get_context("fork").Pool(parallel) as pool:
            t0 = time.perf_counter()
            stored = sum(pool.map(_send_chunk, chunks))
            seconds = time.perf_counter() - t0
    finally:
        _stop(proc)
    assert stored == len(files), f"{stored} of {len(files)} stored"
    return len(files) / seconds


def orthanc_push_rate(files: list[Path], tmp: Path, *, to: str = "cxr") -> float:
    """Orthanc (a DCMTK-based sender, as in a hospital) pushes every file in one store job to `cxr dicom-listen`,
    or (`to="orthanc"`, the baseline) to a second Orthanc."""
    from tests.pacs.dicom_factory import send
    from tests.services import OrthancServer, free_port

    source = OrthancServer(tmp / f"orthanc-{to}").start()
    if to == "cxr":
        proc, port = _start_receiver(_env(tmp / "rx-orthanc"), tmp / "rx-orthanc.log", dispatch=False)
        stop = lambda: _stop(proc)  # noqa: E731
    else:
        target = OrthancServer(tmp / "orthanc-target", aet="CXR").start()
        target.add_modality("source", source.aet, source.dicom_port)
        port, stop = target.dicom_port, target.stop
    try:
        source.add_modality("bench", "BENCH", free_port())
        send(files, "127.0.0.1", source.dicom_port, called=source.aet, calling="BENCH")
        source.add_modality("cxr", "CXR", port)
        ids = source.rest("GET", "/instances").json()
        t0 = time.perf_counter()
        job = source.rest("POST", "/modalities/cxr/store", json={"Resources": ids, "Synchronous": True}).json()
        seconds = time.perf_counter() - t0
    finally:
        stop()
        source.stop()
    assert job.get("FailedInstancesCount", 0) == 0 and len(ids) == len(files), job
    return len(files) / seconds


def latency(files: list[Path], warm: list[Path], model: Path, backend: str, gap: float, tmp: Path) -> dict:
    from pynetdicom import AE

    from tests.services import RedisServer

    data_dir = tmp / "latency"
    redis = RedisServer(tmp / "redis").start()
    env = _env(
        data_dir,
        model=model,
        inference_backend=backend,
        redis_url=redis.url,
        sweep_interval_s=2,
        broker_timeout_s=1,
        receiver_dispatch_interval_s=2,
        queue_batch_size=8,
    )
    with (tmp / "worker.log").open("ab") as fh:
        worker = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "worker", "--concurrency", "1", "--loglevel", "WARNING"],
            env=env,
            cwd=REPO,
            stdout=fh,
            stderr=fh,
            start_new_session=True,
        )
    proc, port = _start_receiver(env, tmp / "rx-latency.log", dispatch=True)
    ledger_path = data_dir / "ledger.sqlite3"

    def indexed_at() -> dict[str, float]:
        with sqlite3.connect(ledger_path) as db:
            return {k[4:]: t for k, t in db.execute("SELECT key, indexed_at FROM items WHERE state='indexed'")}

    try:
        import pydicom

        def run(paths: list[Path], pause: float) -> dict[str, float]:
            datasets = [pydicom.dcmread(p) for p in paths]
            ae = AE(ae_title="BENCH")
            ae.add_requested_context(str(datasets[0].SOPClassUID), str(datasets[0].file_meta.TransferSyntaxUID))
            acked: dict[str, float] = {}
            assoc = ae.associate("127.0.0.1", port, ae_title="CXR")
            assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for d in datasets:
                if assoc.send_c_store(d).Status == 0:
                    acked[str(d.SOPInstanceUID)] = time.time()
                time.sleep(pause)
            assoc.release()
            return acked

        def wait(uids: set[str], timeout: float) -> dict[str, float]:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                done = indexed_at()
                if uids <= done.keys():
                    return done
                time.sleep(0.05)
            raise TimeoutError(f"{len(uids - indexed_at().keys())} not indexed; see {tmp / 'worker.log'}")

        wait(set(run(warm, 0.0)), 300)  # model loaded in the worker's processes, store created
        acked = run(files, gap)
        done = wait(set(acked), 300)
    finally:
        _stop(proc)
        _stop(worker)
        redis.stop()
    lat = np.array([done[u] - t for u, t in acked.items()])
    return {
        "n": len(lat),
        "gap_s": gap,
        "p50_s": round(float(np.percentile(lat, 50)), 3),
        "p95_s": round(float(np.percentile(lat, 95)), 3),
        "max_s": round(float(lat.max()), 3),
    }


def default_backend() -> str:
    """The back end the service runs when CXR_INFERENCE_BACKEND is unset (Settings' default; "" = eager)."""
    from services.config import Settings

    return Settings.model_fields["inference_backend"].default or ""


def describe_model(ckpt: Path, note: str) -> dict:
    """What the latency row embedded with: the checkpoint's id, path and shape, from its config.json."""
    from services.embedding.checkpoint_meta import checkpoint_id, read_checkpoint_config

    enc = read_checkpoint_config(ckpt)["encoder"]
    return {
        "id": checkpoint_id(ckpt),
        "path": str(ckpt),
        "shape": enc.get("shape"),
        "image_size": enc.get("image_size"),
        "embed_dim": enc.get("embed_dim"),
        "note": note,
    }


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run(
    n: int = 240, latency_n: int = 40, gap: float = 0.25, model: Path | None = None, backend: str | None = None
) -> dict:
    """All rows in one run; returns the JSON-able result (benchmarks/queue.py calls this). `backend` None = the
    service's default back end."""
    from benchmarks.queue import checkpoint
    from tests.pacs.dicom_factory import public_jpegs

    backend = default_backend() if backend is None else backend
    load_start, started = _load(), time.strftime("%Y-%m-%d %H:%M:%S %Z")
    jpegs = public_jpegs(DATA, n + latency_n + 8)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        ckpt, model_note = checkpoint(model, tmp)
        model_info = describe_model(ckpt, model_note)
        rows = {
            "durability floor (intake alone, 1 thread)": durability_floor(
                build(tmp / "f", jpegs[:n], "f"), tmp / "floor"
            )
        }
        for parallel in (1, 4, 8):
            files = build(tmp / f"p{parallel}", jpegs[:n], f"p{parallel}")
            rows[f"receiver, {parallel} association(s)"] = receiver_rate(files, parallel, tmp)
        orth = build(tmp / "orth", jpegs[:n], "orth")
        rows["Orthanc push to cxr, 1 association"] = orthanc_push_rate(orth, tmp, to="cxr")
        rows["baseline: Orthanc push to a 2nd Orthanc"] = orthanc_push_rate(orth, tmp, to="orthanc")
        lat_files = build(tmp / "lat", jpegs[n : n + latency_n], "lat")
        warm = build(tmp / "warm", jpegs[n + latency_n :], "warm")
        lat = latency(lat_files, warm, ckpt, backend, gap, tmp)
    return {
        "when": {"start": started, "end": time.strftime("%Y-%m-%d %H:%M:%S %Z")},
        "n_per_row": n,
        "instance_kb_mean": round(float(np.mean([p.stat().st_size for p in jpegs[:n]]) / 1024), 1),
        "cores": os.cpu_count(),
        "load_avg_1_5_15min": {"start": load_start, "end": _load()},
        "model": model_info,
        "backend": backend or "eager",
        "instances_per_s": {k: round(v, 1) for k, v in rows.items()},
        "cstore_to_searchable": lat,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=240, help="instances per throughput row")
    p.add_argument("--latency-n", type=int, default=40)
    p.add_argument("--gap", type=float, default=0.25, help="seconds between sends in the latency row")
    p.add_argument("--model", type=Path, metavar="DIR", help="trained checkpoint folder for the latency row")
    p.add_argument("--backend", help="inference back end for the latency row; default the service's default")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    result = run(args.n, args.latency_n, args.gap, args.model, args.backend)
    load = result["load_avg_1_5_15min"]
    print(
        f"{result['n_per_row']} DX instances per row (~{result['instance_kb_mean']} kB), {result['cores']} cores,"
        f" load {load['start']} at start, {load['end']} at end"
    )
    print(f"{'row':44} {'instances/s':>11}")
    for name, rate in result["instances_per_s"].items():
        print(f"{name:44} {rate:11.1f}")
    lat, m = result["cstore_to_searchable"], result["model"]
    print(
        f"C-STORE -> searchable ({lat['n']} sent {lat['gap_s']} s apart, worker running,"
        f" {m['id']} ({m['shape']}, {m['image_size']} px) on {result['backend']}):"
        f" p50 {lat['p50_s']} s, p95 {lat['p95_s']} s, max {lat['max_s']} s"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
