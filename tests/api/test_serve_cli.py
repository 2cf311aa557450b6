"""`cxr serve`: it refuses a public host without a token, and, run for real (a subprocess on a free port), serves
the API and the viewer over the embedded store with the checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from cli.main import app
from cli.serve_cmd import is_loopback
from tests.api.conftest import Indexed, serve_env
from tests.services import free_port, wait_for


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.20", False), ("example.org", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_serve_refuses_a_public_host_without_a_token(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CXR_API_TOKEN", raising=False)
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--port", str(free_port())])
    assert result.exit_code == 2
    assert "refusing to listen on 0.0.0.0 without a token" in result.output
    assert "CXR_API_TOKEN" in result.output


def test_serve_runs_the_api_and_the_viewer(indexed: Indexed, tmp_path: Path) -> None:
    port = free_port()
    env = serve_env(indexed)
    log = (tmp_path / "serve.log").open("w")
    cxr = Path(sys.executable).with_name("cxr")
    proc = subprocess.Popen([str(cxr), "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(base + "/readyz", timeout=2).status_code == 200, timeout=120, what="cxr serve")
        assert "<title>cxr" in httpx.get(base + "/viewer/").text
        assert httpx.get(base + "/", follow_redirects=True).url.path == "/viewer/"
        query = indexed.sample / indexed.rows[0]["path"]
        r = httpx.post(base + "/v1/search", params={"k": 4}, files={"file": ("q", query.read_bytes())}, timeout=60)
        assert r.status_code == 200 and len(r.json()["hits"]) == 4
        assert r.headers.get("server") is None  # no server banner
        index = httpx.post(base + "/v1/index", files={"file": ("q", query.read_bytes())}, timeout=30)
        assert index.status_code == 503  # no CXR_REDIS_URL: no queue, and it says so
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    output = (tmp_path / "serve.log").read_text()
    assert "listens on 127.0.0.1 (this machine) only" in " ".join(output.split())
