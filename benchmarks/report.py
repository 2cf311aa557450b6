"""The loop back to the PACS: time from a film's C-STORE into cxr to its similar-cases report stored in Orthanc,
beside the C-STORE-to-searchable time of the same films in the same run.

Set-up: Redis, a real Orthanc (the PACS, with cxr registered in its DicomModalities), `cxr dicom-listen` and
`cxr worker` (embed x1 + the index writer, which also consumes the report queue), reports sent by C-STORE
(`CXR_REPORT_DESTINATION=dicom://ORTHANC@...`). `--seed` films from a caller outside the report scope fill the
archive first (other patients to compare with); a few warm-up films load the model in every process. Then `--n`
films, each its own patient and study, are sent one every `--gap` seconds, one association each, as a modality
does. Per film:
- searchable = the ledger's indexed_at (points flushed) minus the moment the C-STORE success came back;
- report = the report row's sent_at (Orthanc answered success to both C-STOREs, so both objects are stored there)
  minus the same moment; Orthanc's instance count is checked at the end (2 per film, nothing missing or twice).
p50/p95 of both and of their difference (what the report adds). The target: at most 1 s added at p95.

Run `python -m benchmarks.report [--n 100] [--model DIR]`; prints a table and writes benchmarks/results/report.json
(with `n`: fewer films than 100 when the machine was loaded; the load average is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.receiver import DATA, _env, _load, _start_receiver, _stop, default_backend, describe_model

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "report.json"


def _films(folder: Path, jpegs: list[Path], first: int, seed: str) -> list[Path]:
    """DX films, each of its own patient and study."""
    from tests.pacs.dicom_factory import dx_from_jpeg, save

    return [save(dx_from_jpeg(j, first + i, patient=first + i, seed=seed), folder) for i, j in enumerate(jpegs)]


def _store_one(path: Path, port: int, calling: str) -> tuple[str, float]:
    """C-STORE one film in its own association; (SOP UID, the moment its success came back)."""
    import pydicom
    from pynetdicom import AE

    ds = pydicom.dcmread(path)
    ae = AE(ae_title=calling)
    ae.add_requested_context(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", port, ae_title="CXR")
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    status = assoc.send_c_store(ds)
    acked = time.time()
    assoc.release()
    if getattr(status, "Status", -1) != 0:
        raise RuntimeError(f"C-STORE of {path.name} answered {status}")
    return str(ds.SOPInstanceUID), acked


def _times(ledger: Path) -> tuple[dict[str, float], dict[str, float]]:
    """(indexed_at, report sent_at) by SOP Instance UID."""
    with sqlite3.connect(ledger) as db:
        indexed = {k[4:]: t for k, t in db.execute("SELECT key, indexed_at FROM items WHERE state='indexed'")}
        sent = {k[4:]: t for k, t in db.execute("SELECT key, sent_at FROM reports WHERE state='sent'")}
    return indexed, sent


def _wait(ledger: Path, uids: set[str], timeout: float, log: Path) -> tuple[dict[str, float], dict[str, float]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        indexed, sent = _times(ledger)
        if uids <= indexed.keys() and uids <= sent.keys():
            return indexed, sent
        time.sleep(0.05)
    raise TimeoutError(f"{len(uids - _times(ledger)[1].keys())} report(s) not sent; see {log}")


def _pct(values: np.ndarray) -> dict[str, float]:
    return {
        "p50_s": round(float(np.percentile(values, 50)), 3),
        "p95_s": round(float(np.percentile(values, 95)), 3),
        "max_s": round(float(values.max()), 3),
    }


def run(
    n: int = 100, gap: float = 1.0, seed_n: int = 12, model: Path | None = None, backend: str | None = None
) -> dict:
    import subprocess
    import sys

    from benchmarks.queue import checkpoint
    from tests.pacs.dicom_factory import public_jpegs, send
    from tests.services import OrthancServer, RedisServer

    backend = default_backend() if backend is None else backend
    load_start, started = _load(), time.strftime("%Y-%m-%d %H:%M:%S %Z")
    jpegs = public_jpegs(DATA, seed_n + 3 + n)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        ckpt, note = checkpoint(model, tmp)
        redis, orthanc = RedisServer(tmp / "redis").start(), OrthancServer(tmp / "orthanc").start()
        data_dir = tmp / "data"
        env = _env(
            data_dir,
            model=ckpt,
            inference_backend=backend,
            redis_url=redis.url,
            sweep_interval_s=2,
            broker_timeout_s=1,
            receiver_dispatch_interval_s=2,
            queue_batch_size=8,
            report_destination=f"dicom://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}",
            report_from="BENCH",  # the seeded archive (caller SEED) gets no reports
        )
        log = tmp / "worker.log"
        with log.open("ab") as fh:
            worker = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "worker", "--concurrency", "1", "--loglevel", "WARNING"],
                env=env,
                cwd=REPO,
                stdout=fh,
                stderr=fh,
                start_new_session=True,
            )
        receiver, port = _start_receiver(env | {"CXR_DICOM_ALLOW_AETS": "SEED"}, tmp / "rx.log", dispatch=True)
        orthanc.add_modality("cxr", "CXR", port)
        ledger = data_dir / "ledger.sqlite3"
        try:
            seeds = _films(tmp / "seed", jpegs[:seed_n], 0, "bench-report-seed")
            assert set(send(seeds, "127.0.0.1", port, called="CXR", calling="SEED").values()) == {0}
            warm = [_store_one(p, port, "BENCH") for p in _films(tmp / "warm", jpegs[seed_n : seed_n + 3], 500, "w")]
            _wait(ledger, {u for u, _ in warm}, 600, log)  # model loaded in every process, store created
            films = _films(tmp / "films", jpegs[seed_n + 3 :], 1000, "bench-report")
            acked: dict[str, float] = {}
            for path in films:
                t0 = time.monotonic()
                uid, at = _store_one(path, port, "BENCH")
                acked[uid] = at
                time.sleep(max(0.0, gap - (time.monotonic() - t0)))
            indexed, sent = _wait(ledger, set(acked), 600, log)
            held = len(orthanc.rest("GET", "/instances").json())
        finally:
            _stop(receiver)
            _stop(worker)
            orthanc.stop()
            redis.stop()
        model_info = describe_model(ckpt, note)
    searchable = np.array([indexed[u] - t for u, t in acked.items()])
    report = np.array([sent[u] - t for u, t in acked.items()])
    expected = 2 * (len(acked) + len(warm))
    assert held == expected, f"Orthanc holds {held} objects, expected {expected} (a PDF and an SR per film)"
    return {
        "when": {"start": started, "end": time.strftime("%Y-%m-%d %H:%M:%S %Z")},
        "n": len(acked),
        "gap_s": gap,
        "archive_films": seed_n,
        "cores": os.cpu_count(),
        "load_avg_1_5_15min": {"start": load_start, "end": _load()},
        "model": model_info,
        "backend": backend or "eager",
        "destination": "C-STORE to Orthanc (Encapsulated PDF + Comprehensive SR)",
        "orthanc_objects": held,
        "cstore_to_searchable": _pct(searchable),
        "cstore_to_report_in_orthanc": _pct(report),
        "report_adds": _pct(report - searchable),
        "target_added_p95_s": 1.0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=100, help="films timed (fewer on a loaded machine)")
    p.add_argument("--gap", type=float, default=1.0, help="seconds between films")
    p.add_argument("--seed", type=int, default=12, help="films in the archive before (other patients)")
    p.add_argument("--model", type=Path, metavar="DIR", help="trained checkpoint folder")
    p.add_argument("--backend", help="inference back end; default the service's default")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    result = run(args.n, args.gap, args.seed, args.model, args.backend)
    load = result["load_avg_1_5_15min"]
    print(
        f"{result['n']} films, one every {result['gap_s']} s, archive of {result['archive_films']},"
        f" {result['cores']} cores, load {load['start']} at start, {load['end']} at end; model"
        f" {result['model']['shape']} ({result['backend']})"
    )
    print(f"{'time from C-STORE success':38} {'p50 s':>7} {'p95 s':>7} {'max s':>7}")
    for name, key in (
        ("to searchable", "cstore_to_searchable"),
        ("to report stored in Orthanc", "cstore_to_report_in_orthanc"),
        ("report adds", "report_adds"),
    ):
        row = result[key]
        print(f"{name:38} {row['p50_s']:7.3f} {row['p95_s']:7.3f} {row['max_s']:7.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
