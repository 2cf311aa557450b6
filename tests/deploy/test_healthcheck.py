"""deploy/healthcheck.py, run as Docker runs it (a subprocess), against real servers on free loopback ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.compose import REPO

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


class _Readyz(BaseHTTPRequestHandler):
    ready = False
    seen_auth: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        type(self).seen_auth.append(self.headers.get("Authorization"))
        code = 200 if self.path == "/readyz" and type(self).ready else 503
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"ready" if code == 200 else b"model not loaded")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def http_server() -> Iterator[tuple[str, type[_Readyz]]]:
    handler = type("Handler", (_Readyz,), {"ready": False, "seen_auth": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def test_http_probe_follows_readiness_and_sends_the_token(http_server: tuple[str, type[_Readyz]]) -> None:
    base, handler = http_server
    not_ready = _probe("http", f"{base}/readyz")
    assert not_ready.returncode == 1 and "HTTP 503" in not_ready.stdout
    handler.ready = True
    ready = _probe("http", f"{base}/readyz", env={"CXR_API_TOKEN": "s3cret"})
    assert ready.returncode == 0 and ready.stdout.startswith("healthy:")
    assert handler.seen_auth == [None, "Bearer s3cret"]


def test_http_and_tcp_probes_fail_fast_on_a_closed_port() -> None:
    port = _closed_port()
    start = time.monotonic()
    http = _probe("--timeout", "2", "http", f"http://127.0.0.1:{port}/livez")
    tcp = _probe("--timeout", "2", "tcp", "127.0.0.1", str(port))
    assert http.returncode == 1 and tcp.returncode == 1
    assert "refused" in tcp.stdout.lower()
    assert time.monotonic() - start < 10


def test_tcp_probe_accepts_a_listener() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        result = _probe("tcp", "127.0.0.1", str(listener.getsockname()[1]))
    assert result.returncode == 0, result.stdout


def test_dicom_probe_echoes_and_counts_a_rejection_as_up() -> None:
    pytest.importorskip("pynetdicom", reason="pynetdicom is installed with the DICOM receiver")
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    port = _closed_port()
    assert _probe("--timeout", "2", "dicom", "127.0.0.1", str(port)).returncode == 1
    ae = AE(ae_title="CXR")
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", port), block=False)
    try:
        echo = _probe("dicom", "127.0.0.1", str(port), "--aet", "CXR")
        assert echo.returncode == 0 and "C-ECHO success" in echo.stdout
        ae.require_calling_aet = ["PACS"]  # the allow-list does not name the probe
        rejected = _probe("dicom", "127.0.0.1", str(port), "--aet", "CXR")
        assert rejected.returncode == 0 and "rejected" in rejected.stdout
    finally:
        server.shutdown()


@pytest.fixture()
def redis_url(redis_server: Any) -> str:
    """The session's real redis-server (tests/conftest.py)."""
    return redis_server.url


def test_worker_probe_needs_the_queue_s_worker_process_and_its_broker(redis_url: str, tmp_path: Path) -> None:
    pytest.importorskip("celery", reason="celery is installed with the queue")
    queue = f"embed-{uuid.uuid4().hex[:8]}"  # unique: other workers may run on this machine
    nobody = _probe("worker", "--queue", queue, env={"CXR_REDIS_URL": redis_url})
    assert nobody.returncode == 1 and "no cxr/celery worker process" in nobody.stdout
    (tmp_path / "probe_app.py").write_text(
        "from celery import Celery\n"
        f"app = Celery(broker={redis_url!r})\n"
        "app.conf.worker_enable_remote_control = False  # as cxr's workers run\n"
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "probe_app", "worker", "--pool", "solo", "--queues", queue],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        healthy = _probe("worker", "--queue", queue, env={"CXR_REDIS_URL": redis_url})
        assert healthy.returncode == 0 and f"worker pid {worker.pid} runs" in healthy.stdout, healthy.stdout
        other = _probe("worker", "--queue", f"{queue}-other", env={"CXR_REDIS_URL": redis_url})
        assert other.returncode == 1, "a worker for another queue does not count"
        start = time.monotonic()
        down = _probe("--timeout", "2", "worker", "--queue", queue, "--broker", f"redis://127.0.0.1:{_closed_port()}/0")
        assert down.returncode == 1 and "does not answer" in down.stdout
        assert time.monotonic() - start < 6, "a broker that is down fails the probe at once"
    finally:
        worker.terminate()
        worker.wait(30)


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
