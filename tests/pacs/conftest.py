"""Fixtures for the PACS tests: a real Orthanc, real receiver processes, the real RG1 films and DX instances built
around cxr-public JPEGs, and indexing of ledger items (inline with the tiny checkpoint, or by the real worker)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pacs.dicom_factory import Instance, dx_from_jpeg, echo, public_jpegs, rg1_instances, save
from tests.services import OrthancServer, free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
SALT = "pacs-test-salt"


@pytest.fixture()
def clean_orthanc(orthanc: OrthancServer) -> OrthancServer:
    orthanc.clear()
    return orthanc


@pytest.fixture(scope="session")
def rg1(dicom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Instance]:
    """RG1 chest CR as stored (explicit VR LE, JPEG 2000 lossless and lossy) plus a JPEG-LS lossless copy."""
    return rg1_instances(dicom_dir, tmp_path_factory.mktemp("rg1"))


@pytest.fixture(scope="session")
def dx_dir(cxr_public: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 DX instances around cxr-public JPEGs (JPEG baseline and uncompressed, three study dates), with PHI."""
    out = tmp_path_factory.mktemp("dx")
    dates = ("20240105", "20240105", "20240106", "20240301")
    for i, jpeg in enumerate(public_jpegs(cxr_public, 120)):
        save(dx_from_jpeg(jpeg, i, study_date=dates[i % 4], encapsulated=i % 3 != 0, patient=i // 2), out)
    return out


def dx_files(dx_dir: Path, n: int) -> list[Path]:
    return sorted(dx_dir.glob("*.dcm"))[:n]


def pacs_env(data_dir: Path, model: Path, **extra: object) -> dict[str, str]:
    """The environment of a cxr process in these tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(
        {
            "CXR_DATA_DIR": str(data_dir),
            "CXR_MODEL": str(model),
            "CXR_PATIENT_SALT": SALT,
            "CXR_SPOOL_MIN_FREE_MB": "0",
            "CXR_TORCH_THREADS": "1",
            "CXR_DECODE_WORKERS": "1",
            "CXR_STORE_LINGER_S": "0.2",
            "PYTHONPATH": str(REPO),
        }
    )
    env.update({f"CXR_{k.upper()}": str(v) for k, v in extra.items()})
    return env


@pytest.fixture()
def pacs_settings(data_dir: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """Settings for in-process receivers and pulls (same salt and model as the subprocesses)."""
    from services.config import Settings

    monkeypatch.setenv("CXR_PATIENT_SALT", SALT)
    monkeypatch.setenv("CXR_MODEL", str(tiny_checkpoint))
    monkeypatch.setenv("CXR_SPOOL_MIN_FREE_MB", "0")
    monkeypatch.setenv("CXR_STORE_LINGER_S", "0.2")
    return Settings()


def index_inline(settings) -> dict[str, int]:  # noqa: ANN001
    """Index every due ledger item with the real pipeline jobs (no Celery): embed_keys then write_points."""
    from services.embedding import BatchEncoder
    from services.index import open_store
    from services.pipeline.batch_jobs import embed_keys, write_points
    from services.pipeline.ingest import IngestOptions
    from services.pipeline.ledger import Ledger
    from services.pipeline.submission import due_batches

    ledger = Ledger(settings.ledger_path)
    encoder = BatchEncoder.from_checkpoint(settings.model_path, batch_size=16, bf16=False)
    opts = IngestOptions(collection=settings.collection, batch_size=16, decode_workers=1)
    store = open_store(settings)
    try:
        for collection, keys in due_batches(ledger.due(requeue_after_s=0.0), 16):
            out = embed_keys(
                ledger, encoder, keys, opts=opts, salt=settings.salt, max_attempts=5, collection=collection
            )
            for batch in out.batches:
                write_points(store, ledger, batch)
    finally:
        store.close()
    return ledger.counts()


def stored_payloads(settings) -> list[dict]:  # noqa: ANN001
    """Every payload in the collection (opens the shared embedded store for a moment)."""
    from services.index import open_store

    store = open_store(settings)
    try:
        if not store.has_collection(settings.collection):
            return []
        return [p.payload for p in store.scroll(settings.collection)]
    finally:
        store.close()


class ReceiverProcess:
    """`cxr dicom-listen` in its own process (own session, so a SIGKILL takes only it), stderr kept in a file."""

    def __init__(self, env: dict[str, str], workdir: Path, *, allow: tuple[str, ...], port: int | None = None) -> None:
        self.env, self.workdir, self.allow = env, Path(workdir), allow
        self.port = port or free_port()
        self.log = self.workdir / f"receiver-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> ReceiverProcess:
        args = [sys.executable, "-m", "cli.main", "dicom-listen", "--aet", "CXR", "--host", "127.0.0.1"]
        args += ["--port", str(self.port)] + [a for aet in self.allow for a in ("--allow-aet", aet)]
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(args, env=self.env, stdout=fh, stderr=fh, cwd=REPO, start_new_session=True)
        wait_for(self._ready, timeout=30, what="cxr dicom-listen")
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"cxr dicom-listen exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
        return echo("127.0.0.1", self.port, called="CXR", calling=self.allow[0])

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def text(self) -> str:
        return self.log.read_text(errors="replace")


class WorkerProcess:
    """`cxr worker` (embed x1 + the index writer + the sweep) in its own process group."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env, self.log = env, Path(workdir) / "worker.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "worker", "--concurrency", "1", "--loglevel", "WARNING"],
                env=self.env,
                stdout=fh,
                stderr=fh,
                cwd=REPO,
                start_new_session=True,
            )
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError):  # celery children left behind by a parent that died first
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None


def ledger_keys(settings, state: str | None = None) -> set[str]:  # noqa: ANN001
    import sqlite3

    with sqlite3.connect(settings.ledger_path) as db:
        query = "SELECT key FROM items" + (" WHERE state=?" if state else "")
        return {r[0] for r in db.execute(query, (state,) if state else ())}


def dump(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
