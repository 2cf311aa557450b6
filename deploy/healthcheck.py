"""Container health probes for the cxr services, in plain Python so that the image needs no curl, wget or nc.

    python deploy/healthcheck.py http URL            2xx from URL (sends CXR_API_TOKEN as a bearer token if set)
    python deploy/healthcheck.py tcp HOST PORT       something accepts a TCP connection
    python deploy/healthcheck.py dicom HOST PORT     a DICOM Storage SCP answers an association (C-ECHO)
    python deploy/healthcheck.py worker [--queue Q]  a worker process for Q runs here and its broker answers;
                                                     with CXR_DATA_DIR (or --data-dir): its consumer is not
                                                     stalled and the ledger's queue moves

Exit 0 when healthy, 1 when not, with one line saying why (Docker keeps it in the container's health log).
Every probe is bounded by --timeout, so a broker or peer that hangs makes the check fail, never stall.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path


def probe_http(url: str, timeout: float) -> tuple[bool, str]:
    """GET `url`; healthy on a 2xx answer."""
    request = urllib.request.Request(url, method="GET")
    token = os.environ.get("CXR_API_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (the URL is ours)
            return True, f"{url}: HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}: HTTP {exc.code} {exc.reason}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url}: {getattr(exc, 'reason', exc)}"


def probe_tcp(host: str, port: int, timeout: float) -> tuple[bool, str]:
    """Healthy when a TCP connection to host:port opens."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, f"{host}:{port} accepts connections"
    except OSError as exc:
        return False, f"{host}:{port}: {exc.strerror or exc}"


def probe_dicom(host: str, port: int, called_aet: str, calling_aet: str, timeout: float) -> tuple[bool, str]:
    """Associate and send a C-ECHO. A rejected association also counts: the DICOM layer is up and answering,
    it just does not accept this calling AE title (the receiver's allow-list decides)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=calling_aet)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    assoc = ae.associate(host, port, ae_title=called_aet)
    try:
        if assoc.is_established:
            status = assoc.send_c_echo()
            code = getattr(status, "Status", None)
            if code == 0x0000:
                return True, f"{called_aet}@{host}:{port}: C-ECHO success"
            return False, f"{called_aet}@{host}:{port}: C-ECHO answered {code!r}"
        if assoc.is_rejected:
            return True, f"{called_aet}@{host}:{port}: up (association from {calling_aet} rejected)"
        return False, f"{called_aet}@{host}:{port}: no DICOM association (aborted or unreachable)"
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def worker_processes(queue: str | None = None, proc: Path = Path("/proc")) -> list[tuple[int, list[str]]]:
    """(pid, argv) of the `cxr worker` / `celery worker` processes visible here (in a container: its own), that
    consume `queue` when one is given (`--queues a,b` or `-Q a,b`)."""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:  # the process ended while we looked
            continue
        if argv and argv[0].startswith("[celery"):
            # Celery rewrites its title when setproctitle is installed: "[celeryd: x@h:MainProcess] -active- (...)"
            argv = ["celery", "worker", *" ".join(argv).replace("(", " ").replace(")", " ").split()[1:]]
        if "worker" not in argv or not any(Path(a).name in ("cxr", "celery") for a in argv[:3]):
            continue
        if queue is not None:
            flags = [i for i, a in enumerate(argv) if a in ("--queues", "-Q")]
            consumed = {q for i in flags if i + 1 < len(argv) for q in argv[i + 1].split(",")}
            if queue not in consumed:
                continue
        found.append((int(entry.name), argv))
    return found


def probe_worker(broker: str, queue: str | None, timeout: float) -> tuple[bool, str]:
    """Healthy when a worker process for `queue` runs here and its broker answers PING. (The cxr workers run with
    Celery's remote control off, so a broadcast ping would get no answer by design.)"""
    workers = worker_processes(queue)
    if not workers:
        return False, f"no cxr/celery worker process{f' for queue {queue}' if queue else ''} is running"
    import redis

    client = redis.Redis.from_url(broker, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return False, f"worker pid {workers[0][0]} runs, but broker {_redact(broker)} does not answer: {exc}"
    finally:
        client.close()
    return True, f"worker pid {workers[0][0]} runs and broker {_redact(broker)} answers"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def probe_consumers(data_dir: Path, queue: str | None, now: float) -> tuple[bool, str]:
    """Read the status files workers/watchdog.py writes (DATA_DIR/workers/<pid>.json): unhealthy when a live
    worker's consumer has been idle while its queue held messages for its stall bound, or stopped checking."""
    import json

    for path in sorted((data_dir / "workers").glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not _alive(int(doc.get("pid", 0))) or (queue is not None and queue not in doc.get("queues", [])):
            continue
        pid, stall_s = doc["pid"], float(doc.get("stall_s", 120))
        if doc.get("stalled_since") and now - float(doc["stalled_since"]) >= stall_s:
            return False, f"worker pid {pid} has no live consumer: messages wait and it takes none"
        if now - float(doc.get("checked_at", 0)) > 3 * float(doc.get("interval_s", 10)) + 30:
            return False, f"worker pid {pid} stopped checking its consumer (hung?)"
    return True, ""


def probe_ledger(ledger: Path, max_wait_s: float, now: float) -> tuple[bool, str]:
    """Unhealthy when an item has been queued longer than `max_wait_s` and nothing started or was indexed in that
    time: the queue does not move (a long backlog that moves stays healthy)."""
    import sqlite3

    if not ledger.exists():
        return True, ""
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=2)
    try:
        oldest = db.execute("SELECT MIN(queued_at) FROM items WHERE state='queued'").fetchone()[0]
        if oldest is None or now - oldest <= max_wait_s:
            return True, ""
        moved = db.execute(
            "SELECT COUNT(*) FROM items WHERE state IN ('processing','indexed','failed') AND updated_at >= ?",
            (now - max_wait_s,),
        ).fetchone()[0]
    except sqlite3.Error:
        return True, ""  # no items table yet, or busy: the worker checks above decide
    finally:
        db.close()
    if moved:
        return True, ""
    return False, f"an item has waited {now - oldest:.0f} s in the queue and nothing moved for {max_wait_s:.0f} s"


def probe_worker_state(data_dir: Path, queue: str | None, max_wait_s: float) -> tuple[bool, str]:
    """The worker's own view (consumer status files) and the ledger's (is the queue moving)."""
    import time

    now = time.time()
    ok, why = probe_consumers(data_dir, queue, now)
    if ok:
        ok, why = probe_ledger(data_dir / "ledger.sqlite3", max_wait_s, now)
    return ok, why


def _redact(url: str) -> str:
    """Drop a password from a broker URL before printing it."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    auth, _, tail = rest.rpartition("@")
    user = auth.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{tail}" if ":" in auth else url


def main(argv: list[str] | None = None) -> int:
    """Parse the probe and its target, run it, print one line, return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds for the whole probe (default 5)")
    sub = parser.add_subparsers(dest="probe", required=True)
    http = sub.add_parser("http")
    http.add_argument("url")
    tcp = sub.add_parser("tcp")
    tcp.add_argument("host")
    tcp.add_argument("port", type=int)
    dicom = sub.add_parser("dicom")
    dicom.add_argument("host")
    dicom.add_argument("port", type=int)
    dicom.add_argument("--aet", default="CXR", help="the receiver's AE title (called AE)")
    dicom.add_argument("--calling-aet", default="CXR-HEALTH", help="the AE title this probe calls from")
    worker = sub.add_parser("worker")
    worker.add_argument("--queue", default=None, help="the queue the worker must consume (default any)")
    worker.add_argument("--broker", default=None, help="broker URL (default CXR_REDIS_URL)")
    worker.add_argument("--data-dir", default=None, help="cxr data directory (default CXR_DATA_DIR; unset: skip)")
    worker.add_argument(
        "--max-queue-wait",
        type=float,
        default=float(os.environ.get("CXR_HEALTH_MAX_QUEUE_WAIT_S", "900")),
        help="seconds an item may wait queued while nothing moves (default CXR_HEALTH_MAX_QUEUE_WAIT_S, 900)",
    )
    args = parser.parse_args(argv)

    if args.probe == "http":
        ok, why = probe_http(args.url, args.timeout)
    elif args.probe == "tcp":
        ok, why = probe_tcp(args.host, args.port, args.timeout)
    elif args.probe == "dicom":
        ok, why = probe_dicom(args.host, args.port, args.aet, args.calling_aet, args.timeout)
    else:
        broker = args.broker or os.environ.get("CXR_REDIS_URL", "redis://127.0.0.1:6379/0")
        ok, why = probe_worker(broker, args.queue, args.timeout)
        data_dir = args.data_dir or os.environ.get("CXR_DATA_DIR")
        if ok and data_dir:
            state_ok, state_why = probe_worker_state(Path(data_dir), args.queue, args.max_queue_wait)
            ok, why = state_ok, (why if state_ok else state_why)
    print(("healthy: " if ok else "unhealthy: ") + why)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
