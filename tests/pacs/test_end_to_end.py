"""End to end with the real queue: Orthanc pushes to `cxr dicom-listen`, the dispatcher sends to Celery on a real
Redis, `cxr worker` embeds and indexes, and the images are found by `cxr search`. Also: 100 instances over 8
parallel associations, and Redis stopped while instances arrive."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pydicom
import pytest

from services.config import Settings
from services.pipeline.ledger import sop_key
from tests.pacs.conftest import (
    REPO,
    SALT,
    ReceiverProcess,
    WorkerProcess,
    dx_files,
    ledger_keys,
    pacs_env,
    stored_payloads,
)
from tests.pacs.dicom_factory import PHI_ID_PREFIX, PHI_NAME_PREFIX, public_jpegs, send
from tests.services import OrthancServer, RedisServer, free_port, wait_for

pytestmark = pytest.mark.slow


class Stack:
    def __init__(self, root: Path, model: Path) -> None:
        self.data_dir = root / "cxr-data"
        self.redis = RedisServer(root / "redis").start()
        self.env = pacs_env(
            self.data_dir,
            model,
            redis_url=self.redis.url,
            sweep_interval_s=1,
            broker_timeout_s=1,
            receiver_dispatch_interval_s=1,
            queue_batch_size=16,
            batch_size=16,
        )
        self.settings = Settings(
            data_dir=self.data_dir, patient_salt=SALT, model=model, spool_min_free_mb=0, store_linger_s=0.2
        )
        self.worker = WorkerProcess(self.env, root).start()
        self.receiver = ReceiverProcess(self.env, root, allow=("ORTHANC", "MODALITY")).start()

    def wait_indexed(self, uids: set[str], timeout: float = 120) -> None:
        want = {sop_key(u) for u in uids}

        def done() -> bool:
            return want <= ledger_keys(self.settings, "indexed")

        try:
            wait_for(done, timeout=timeout, what=f"{len(want)} instances indexed")
        except TimeoutError:
            missing = want - ledger_keys(self.settings, "indexed")
            raise AssertionError(
                f"{len(missing)} not indexed; worker log tail:\n{self.worker.log.read_text()[-3000:]}"
            ) from None

    def stop(self) -> None:
        self.receiver.stop()
        self.worker.stop()
        self.redis.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path):
    s = Stack(tmp_path_factory.mktemp("stack"), tiny_checkpoint)
    yield s
    s.stop()


def _uids(paths: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def test_orthanc_pushes_to_cxr_and_the_images_are_searchable(
    stack: Stack, orthanc: OrthancServer, rg1, dx_dir: Path, cxr_public: Path
):
    orthanc.clear()
    files = [i.path for i in rg1] + dx_files(dx_dir, 6)
    orthanc.add_modality("testscu", "TESTSCU", free_port())
    assert set(send(files, "127.0.0.1", orthanc.dicom_port, called=orthanc.aet, calling="TESTSCU").values()) == {0}
    orthanc.add_modality("cxr", "CXR", stack.receiver.port)
    ids = orthanc.rest("GET", "/instances").json()
    job = orthanc.rest("POST", "/modalities/cxr/store", json={"Resources": ids, "Synchronous": True}).json()
    assert job.get("FailedInstancesCount", 0) == 0 and job.get("InstancesCount") == len(ids)
    sent = _uids(files)
    assert {k for k in ledger_keys(stack.settings)} >= {sop_key(u) for u in sent}
    stack.wait_indexed(sent)
    query = public_jpegs(cxr_public, 120)[119]  # a film that is not in the store
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "search", str(query), "--k", "50", "--json"],
        env=stack.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    hits = json.loads(out.stdout)
    hits = hits["hits"] if isinstance(hits, dict) else hits
    found = [h["payload"]["sop_uid"] for h in hits]
    assert sorted(found) == sorted(sent)  # every pushed instance is searchable, each once
    text = stack.receiver.text() + json.dumps(stored_payloads(stack.settings))
    assert PHI_NAME_PREFIX not in text and PHI_ID_PREFIX not in text and "CompressedSamples" not in text


def test_100_instances_over_8_parallel_associations_are_all_spooled_and_indexed(stack: Stack, dx_dir: Path):
    files = dx_files(dx_dir, 110)[10:110]
    statuses: dict[str, int] = {}
    lock = threading.Lock()

    def sender(chunk: list[Path]) -> None:
        got = send(
            chunk,
            "127.0.0.1",
            stack.receiver.port,
            called="CXR",
            calling="MODALITY",
            dimse_timeout=30,
            resend_lost=True,
        )
        with lock:
            statuses.update(got)

    threads = [threading.Thread(target=sender, args=(files[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    sent = _uids(files)
    assert len(sent) == 100 and statuses.keys() == sent and set(statuses.values()) == {0}
    spooled = {p.stem for p in Path(stack.settings.spool_path).glob("*.dcm")}
    assert sent <= spooled
    stack.wait_indexed(sent)
    uids = [p["sop_uid"] for p in stored_payloads(stack.settings) if p.get("sop_uid") in sent]
    assert len(uids) == len(set(uids)) == 100  # every one once


def test_redis_stopped_while_instances_arrive_then_everything_is_indexed(stack: Stack, dx_dir: Path):
    files = dx_files(dx_dir, 120)[110:120]
    stack.redis.stop()
    try:
        statuses = send(files, "127.0.0.1", stack.receiver.port, called="CXR", calling="MODALITY")
        assert set(statuses.values()) == {0}  # C-STORE still succeeds: the broker is not in the ack path
        sent = _uids(files)
        states = {k: None for k in ledger_keys(stack.settings, "received")}
        assert {sop_key(u) for u in sent} <= states.keys()  # durable, waiting for the queue
    finally:
        stack.redis.start()  # same port, append-only file kept
    stack.wait_indexed(sent, timeout=150)
    assert "Doe" not in stack.receiver.text()
