"""`cxr forget` end to end: two patients indexed through the receiver (C-STORE) and through the queue (`cxr index
--queue`), one forgotten while the worker runs. Then nothing of it is left in the store, spool, ledger, uploads or
Redis, a search with its own film finds none of its points, a resend is refused (and not indexed), and the other
patient is untouched. Real Redis, a real receiver, a real worker, real pynetdicom senders."""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pydicom
import redis

from services.config import Settings
from services.governance.audit import AuditLog
from services.index import QdrantEdgeStore
from services.index.payload import patient_hash
from services.pacs.acceptance import FORGOTTEN, SUCCESS
from services.pipeline.ledger import Ledger
from tests.pacs.conftest import REPO, SALT, ReceiverProcess, WorkerProcess, pacs_env
from tests.pacs.dicom_factory import dx_from_jpeg, public_jpegs, save, send
from tests.services import wait_for

A, B = 900, 901  # the two patients' numbers in dicom_factory's PatientID scheme


def cxr(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=180
    )


def films(cxr_public: Path, folder: Path, patient: int, first: int, n: int = 3) -> list[Path]:
    jpegs = public_jpegs(cxr_public, first + n)[first:]
    return [save(dx_from_jpeg(j, first + i, patient=patient, seed="cxr-forget"), folder) for i, j in enumerate(jpegs)]


def redis_bodies(url: str) -> bytes:
    client = redis.Redis.from_url(url)
    out = []
    for key in client.keys("*"):
        kind = client.type(key)
        values = client.lrange(key, 0, -1) if kind == b"list" else client.hvals(key) if kind == b"hash" else []
        for raw in values:
            out.append(raw)
            with contextlib.suppress(ValueError, KeyError, TypeError):
                out.append(base64.b64decode(json.loads(raw)["body"]))
    return b"".join(out)


def test_a_forgotten_patient_is_gone_everywhere_and_stays_gone(
    tmp_path: Path, cxr_public: Path, tiny_checkpoint: Path, redis_server
) -> None:  # noqa: ANN001
    url = redis_server.url.rsplit("/", 1)[0] + "/15"
    redis.Redis.from_url(url).flushdb()
    env = pacs_env(tmp_path / "data", tiny_checkpoint, redis_url=url, sweep_interval_s="0.5")
    settings = Settings(**{k[4:].lower(): v for k, v in env.items() if k.startswith("CXR_")})
    sent = {p: films(cxr_public, tmp_path / f"sent-{p}", p, 3 * (p - A)) for p in (A, B)}
    queued = {p: films(cxr_public, tmp_path / f"files-{p}", p, 10 + (p - A), n=1) for p in (A, B)}
    hashes = {p: patient_hash(f"MRN-7713-{p:04d}", SALT.encode()) for p in (A, B)}
    worker = WorkerProcess(env, tmp_path).start()
    receiver = ReceiverProcess(env, tmp_path, allow=("MODALITY",)).start()
    try:
        for p in (A, B):
            assert set(send(sent[p], "127.0.0.1", receiver.port, called="CXR", calling="MODALITY").values()) == {
                SUCCESS
            }
            assert cxr(env, "index", "--queue", str(queued[p][0].parent)).returncode == 0
        ledger = Ledger(settings.ledger_path)
        try:
            wait_for(lambda: ledger.counts().get("indexed", 0) == 8, timeout=180, what="8 instances indexed")
        except TimeoutError:
            logs = worker.log.read_text()[-3000:] + receiver.text()[-2000:]
            raise AssertionError(f"{ledger.counts()}\n{logs}") from None

        proc = cxr(env, "forget", "--patient-id", "MRN-7713-0900", "--json")
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["points"] == {settings.collection: 4} and report["ledger_items"] == 4
        assert report["spool_files"] == 3 and report["user_files_left"] == 1  # the file indexed in place is ours

        # nothing of it is left in the ledger's files (rows, refs, free pages, write-ahead log) or the spool
        sop_a = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in sent[A] + queued[A]}
        ledger_bytes = b"".join(p.read_bytes() for p in settings.data_dir.glob("ledger.sqlite3*"))
        assert [u for u in sop_a if u.encode() in ledger_bytes] == []
        spool = {pydicom.dcmread(f, stop_before_pixels=True).PatientID for f in settings.spool_path.glob("*.dcm")}
        assert spool == {f"MRN-7713-{B:04d}"}
        # a resend by C-STORE is refused; the same file queued again fails as forgotten, and lands nowhere
        resent = send(sent[A], "127.0.0.1", receiver.port, called="CXR", calling="MODALITY")
        assert set(resent.values()) == {FORGOTTEN}
        assert cxr(env, "index", "--queue", str(queued[A][0].parent)).returncode == 0
        wait_for(lambda: ledger.counts().get("failed", 0) == 1, timeout=60, what="the resent file to fail")
        (failed,) = ledger.failures()
        assert failed.stage == "forgotten"
        inline = cxr(env, "index", str(queued[A][0].parent))  # and `cxr index` run inline refuses it too
        assert inline.returncode == 1 and "[forgotten]" in inline.stdout + inline.stderr
        wait_for(lambda: b"sop:" not in redis_bodies(url), timeout=60, what="the queues to drain")
    finally:
        receiver.stop()
        worker.stop()

    with QdrantEdgeStore(settings.store_path) as store:
        points = list(store.scroll(settings.collection))
    assert {p.payload.get("patient_hash") for p in points} == {hashes[B]}
    assert len(points) == 4  # the other patient: untouched

    rows = Ledger(settings.ledger_path)
    assert rows.items([f"sop:{u}" for u in sop_a]) == []  # the resend was refused before the ledger
    redis_left = redis_bodies(url)
    assert [u for u in sop_a if u.encode() in redis_left] == []
    assert not (settings.data_dir / "uploads").exists() or not list((settings.data_dir / "uploads").iterdir())

    search = cxr(env, "search", str(sent[A][0]), "--k", "10", "--json")
    assert search.returncode == 0, search.stderr
    assert {h["payload"].get("patient_hash") for h in json.loads(search.stdout)} == {hashes[B]}
    forgets = AuditLog(settings.audit_path).records(action="forget")
    assert len(forgets) == 1 and forgets[0].objects["points"] == 4 and "MRN" not in json.dumps(forgets[0].objects)
