"""deploy/healthcheck.py, run as Docker runs it (a subprocess), against the real `cxr serve`, `cxr dicom-listen`
and `cxr worker` (started as their own tests start them) on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy.compose import REPO
from tests.pacs.conftest import ReceiverProcess, pacs_env
from tests.services import free_port, wait_for
from tests.workers.conftest import (
    WorkerProcess,
    queue_env,
    real_images,
    session_processes,
    settings_of,
    wait_ledger,
)
from tests.workers.test_locked_store_and_bad_input import _hold_store, _release

PROBE = REPO / "deploy" / "healthcheck.py"


def _probe(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "CXR_API_TOKEN"} | (env or {})
    return subprocess.run(
        [sys.executable, str(PROBE), *args], capture_output=True, text=True, timeout=timeout, env=full_env
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def held_store(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen]]:
    """A data dir whose embedded store (one collection) another process holds, as a long optimize would."""
    from services.config import Settings
    from services.index import QdrantEdgeStore

    data = tmp_path / "data"
    settings = Settings(data_dir=data)
    with QdrantEdgeStore(settings.store_path) as store:
        store.create_collection(settings.collection, 64)
    holder = _hold_store(settings.store_path)
    yield data, holder
    _release(holder)


def test_http_probe_follows_readiness_and_sends_the_token(
    held_store: tuple[Path, subprocess.Popen], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """The real `cxr serve`: /readyz is 503 while its store is held elsewhere, then 200 once it is free."""
    data, holder = held_store
    token = "s3cret-probe-token"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")} | {
        "CXR_DATA_DIR": str(data),
        "CXR_MODEL": str(tiny_checkpoint),
        "CXR_PATIENT_SALT": "probe-tests",
        "CXR_TORCH_THREADS": "1",
        "CXR_STORE_WAIT_S": "0.5",
        "CXR_API_TOKEN": token,
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cxr = Path(sys.executable).with_name("cxr")
    with (tmp_path / "serve.log").open("w") as log:
        proc = subprocess.Popen([str(cxr), "serve", "--port", str(port)], env=env, stdout=log, stderr=log)
    try:
        with_token = {"CXR_API_TOKEN": token}
        wait_for(lambda: "store" in httpx.get(base + "/readyz", timeout=2).json().get("errors", {}), timeout=120,
                 what="cxr serve reporting its held store")  # fmt: skip
        not_ready = _probe("http", f"{base}/readyz", env=with_token)
        assert not_ready.returncode == 1 and "HTTP 503" in not_ready.stdout, not_ready.stdout
        assert _probe("http", f"{base}/livez").returncode == 0  # alive, just not ready
        _release(holder)  # the store comes free: the server's next try opens it
        wait_for(lambda: _probe("http", f"{base}/readyz").returncode == 0, timeout=60, what="/readyz healthy")
        ready = _probe("http", f"{base}/readyz", env=with_token)
        assert ready.returncode == 0 and ready.stdout.startswith("healthy:"), ready.stdout
        no_token = _probe("http", f"{base}/v1/collections")  # a route behind the token: the probe must send it
        assert no_token.returncode == 1 and "HTTP 401" in no_token.stdout, no_token.stdout
        wrong = _probe("http", f"{base}/v1/collections", env={"CXR_API_TOKEN": token + "x"})
        assert wrong.returncode == 1 and "HTTP 401" in wrong.stdout
        sent = _probe("http", f"{base}/v1/collections", env=with_token)
        assert sent.returncode == 0 and "HTTP 200" in sent.stdout, sent.stdout
    finally:
        proc.terminate()
        proc.wait(30)


def test_http_and_tcp_probes_fail_fast_on_a_closed_port() -> None:
    port = _closed_port()
    start = time.monotonic()
    http = _probe("--timeout", "2", "http", f"http://127.0.0.1:{port}/livez")
    tcp = _probe("--timeout", "2", "tcp", "127.0.0.1", str(port))
    assert http.returncode == 1 and tcp.returncode == 1
    assert "refused" in tcp.stdout.lower()
    assert time.monotonic() - start < 10


def test_dicom_and_tcp_probes_on_the_real_receiver(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The real `cxr dicom-listen`, probed as compose does (calling AE CXR-HEALTH, not on its allow-list)."""
    pytest.importorskip("pynetdicom", reason="pynetdicom is installed with the DICOM receiver")
    receiver = ReceiverProcess(pacs_env(tmp_path / "data", tiny_checkpoint), tmp_path, allow=("MODALITY",))
    port = str(receiver.port)
    assert _probe("--timeout", "2", "dicom", "127.0.0.1", port, "--aet", "CXR").returncode == 1  # not started yet
    receiver.start()
    try:
        as_compose = _probe("dicom", "127.0.0.1", port, "--aet", "CXR")
        assert as_compose.returncode == 0 and "rejected" in as_compose.stdout, as_compose.stdout
        assert "association from CXR-HEALTH at 127.0.0.1 refused" in receiver.text()  # it reached the receiver
        allowed = _probe("dicom", "127.0.0.1", port, "--aet", "CXR", "--calling-aet", "MODALITY")
        assert allowed.returncode == 0 and "C-ECHO success" in allowed.stdout, allowed.stdout
        assert _probe("tcp", "127.0.0.1", port).returncode == 0
        receiver.kill()
        gone = _probe("--timeout", "2", "dicom", "127.0.0.1", port, "--aet", "CXR")
        assert gone.returncode == 1, gone.stdout
    finally:
        receiver.stop()


def test_worker_probe_follows_the_real_worker_and_its_broker(
    tmp_path: Path, cxr_public: Path, tiny_checkpoint: Path, redis_db_url: str, workers: list
) -> None:
    """The real `cxr worker`, probed as compose does (with CXR_DATA_DIR, so the ledger's queue is checked too): its
    celery workers frozen (SIGSTOP), the queue stalls and the probe fails; thawed, they drain it and it passes."""
    pytest.importorskip("celery", reason="celery is installed with the queue")
    from services.pipeline.sources import build_items
    from services.pipeline.submission import submit
    from workers.dispatch import make_publish

    env = queue_env(tmp_path / "data", redis_db_url, tiny_checkpoint)
    settings = settings_of(env)
    probe_env = {"CXR_REDIS_URL": redis_db_url, "CXR_DATA_DIR": env["CXR_DATA_DIR"]}
    worker = WorkerProcess(env, tmp_path / "worker.log", "--concurrency", "1")
    workers.append(worker)
    status_files = settings.data_dir / "workers"
    wait_for(lambda: len(list(status_files.glob("*.json"))) >= 2, timeout=120, what="both consumers of cxr worker")
    for queue in ("embed", "index"):
        healthy = _probe("worker", "--queue", queue, env=probe_env)
        assert healthy.returncode == 0 and "runs and broker" in healthy.stdout, (queue, healthy.stdout)
    other = _probe("worker", "--queue", f"embed-{uuid.uuid4().hex[:8]}", env=probe_env)
    assert other.returncode == 1 and "no cxr/celery worker process" in other.stdout, "a worker of other queues"
    start = time.monotonic()
    down = _probe("--timeout", "2", "worker", "--queue", "embed", "--broker", f"redis://127.0.0.1:{_closed_port()}/0")
    assert down.returncode == 1 and "does not answer" in down.stdout, down.stdout
    assert time.monotonic() - start < 6, "a broker that is down fails the probe at once"

    # Hung celery workers: their processes are there, nothing moves. (Their parent, which sweeps the ledger and
    # holds its dispatch lock now and then, keeps running: frozen with that lock, it would block the submit.)
    celery = [pid for pid in session_processes(worker.proc.pid) if pid != worker.proc.pid]
    assert len(celery) >= 4, "an embed and an index worker, each with its pool process"
    for pid in celery:
        os.kill(pid, signal.SIGSTOP)
    try:
        items, _ = build_items(real_images(cxr_public, 3))
        assert submit(settings, items, publish=make_publish(settings)).recorded == 3
        stalled = ["--max-queue-wait", "1"]
        wait_for(lambda: "nothing moved" in _probe("worker", "--queue", "embed", *stalled, env=probe_env).stdout,
                 timeout=30, what="the probe to see the stalled queue")  # fmt: skip
    finally:
        for pid in celery:
            os.kill(pid, signal.SIGCONT)
    wait_ledger(settings, lambda c: c["indexed"] == 3, timeout=120, what="the thawed worker draining the queue")
    after = _probe("worker", "--queue", "embed", "--max-queue-wait", "1", env=probe_env)
    assert after.returncode == 0, after.stdout


def test_worker_processes_parse_argv_init_wrappers_and_celery_titles(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("cxr_healthcheck", PROBE)
    assert spec and spec.loader
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    table = {
        11: ["/opt/venv/bin/python", "/opt/venv/bin/cxr", "worker", "--queues", "embed", "--concurrency", "2"],
        12: ["[celeryd: celery@abc:MainProcess] -active- (worker --queues index --concurrency 1)"],
        13: ["python", "/app/deploy/healthcheck.py", "worker", "--queue", "embed"],  # the probe itself
        14: ["/sbin/docker-init", "--", "cxr", "worker", "-Q", "embed,index"],
        15: ["/opt/venv/bin/python", "/opt/venv/bin/cxr", "serve", "--host", "0.0.0.0"],
    }
    for pid, argv in table.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (tmp_path / "self").mkdir()

    def pids(queue: str | None) -> list[int]:
        return sorted(pid for pid, _ in probe.worker_processes(queue, tmp_path))

    assert pids("embed") == [11, 14]
    assert pids("index") == [12, 14]
    assert pids(None) == [11, 12, 14]
    assert pids("missing") == []
