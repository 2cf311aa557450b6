"""Real services for the tests, each on a free loopback port in its own temp dir, waited for, then stopped.

Used through fixtures in tests/conftest.py. Under `make test` (deploy/test-services.sh sets CXR_TEST_SERVICES=1)
a missing binary fails the test; elsewhere it skips with the reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], bool], *, timeout: float = 30.0, what: str = "service") -> None:
    """Poll `check` until it returns True; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not ready yet
            pass
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    raise TimeoutError(f"{what} was not ready within {timeout:.0f} s")


def require(binary: str, package: str) -> str:
    """The binary's path; skip (or fail under make test) when it is not installed."""
    path = shutil.which(binary)
    if path:
        return path
    message = f"{binary} is not installed (Debian package {package}); `make test` installs it"
    if os.environ.get("CXR_TEST_SERVICES"):
        pytest.fail(message)
    pytest.skip(message)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


class RedisServer:
    """A redis-server on loopback that a test may stop and start again on the same port (an outage)."""

    def __init__(self, workdir: Path, *, port: int | None = None, persist: bool = True) -> None:
        self.binary = require("redis-server", "redis-server")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.persist = persist
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def start(self) -> RedisServer:
        # appendonly + fsync always: a restart keeps every queued message, as a production broker should
        persist = ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(self.workdir)]
            + persist,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.ping, timeout=20, what=f"redis on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


class OrthancServer:
    """Debian's Orthanc (with the DICOMweb plugin) on free non-default HTTP and DICOM ports, its own storage in
    `workdir`, authentication on, remote access off, and modality host checks on. Peers are registered at run
    time with `add_modality` (REST PUT /modalities/{name})."""

    PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

    def __init__(self, workdir: Path, *, aet: str = "ORTHANC", user: str = "cxr", password: str | None = None) -> None:
        import secrets

        self.binary = require("Orthanc", "orthanc")
        if not self.PLUGIN.exists():
            message = f"{self.PLUGIN} is missing (Debian package orthanc-dicomweb); `make test` installs it"
            if os.environ.get("CXR_TEST_SERVICES"):
                pytest.fail(message)
            pytest.skip(message)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.aet, self.user = aet, user
        self.password = password or secrets.token_hex(12)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return self.url + "/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.user, self.password)

    def config(self) -> dict:
        return {
            "Name": "cxr-test",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.user: self.password},
            "DicomCheckModalityHost": True,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": False,
            "DicomModalities": {},
            "DicomModalitiesInDatabase": True,
            "OverwriteInstances": True,
            "SaveJobs": False,
            "StableAge": 1,
            "HttpTimeout": 30,
            "DicomScuTimeout": 30,
            "Plugins": [str(self.PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
        }

    def start(self) -> OrthancServer:
        import json

        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=2))
        log = (self.workdir / "orthanc.log").open("ab")
        self.proc = subprocess.Popen([self.binary, str(cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        wait_for(self._ready, timeout=30, what=f"orthanc on port {self.http_port}")
        return self

    def _ready(self) -> bool:
        import requests

        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"orthanc exited with {self.proc.returncode}; see {self.workdir / 'orthanc.log'}")
        return requests.get(self.url + "/system", auth=self.auth, timeout=1).status_code == 200

    def rest(self, method: str, path: str, **kwargs):  # noqa: ANN201 - requests.Response
        import requests

        response = requests.request(method, self.url + path, auth=self.auth, timeout=60, **kwargs)
        response.raise_for_status()
        return response

    def add_modality(self, name: str, aet: str, port: int, *, host: str = "127.0.0.1") -> None:
        """Register a DICOM peer (a sender allowed to C-STORE here, or a Storage SCP to push to)."""
        body = {"AET": aet, "Host": host, "Port": port, "AllowEcho": True, "AllowStore": True, "AllowFind": True}
        self.rest("PUT", f"/modalities/{name}", json=body)

    def clear(self) -> None:
        """Delete every patient (and so every instance) and start the changes feed afresh."""
        for pid in self.rest("GET", "/patients").json():
            self.rest("DELETE", f"/patients/{pid}")
        self.rest("DELETE", "/changes")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
