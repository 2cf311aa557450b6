"""Each C-STORE association leaves one audit record (calling AE, peer address, outcome, instance counts by status),
and so does each refused one; no UID or patient detail reaches the trail; C-STOREs are counted on the metrics
port. Real pynetdicom senders, the real
receiver and the real audit file."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from services.governance.audit import AuditLog
from services.pacs.intake import Intake
from services.pacs.receiver import Receiver, ReceiverConfig
from services.pacs.spool import Spool
from services.pipeline.ledger import Ledger
from tests.pacs.dicom_factory import send
from tests.services import free_port, wait_for
from workers.metrics import serve_metrics


def test_associations_and_refusals_are_audited(pacs_settings, rg1, dicom_dir: Path) -> None:  # noqa: ANN001
    audit = AuditLog(pacs_settings.audit_path)
    intake = Intake(Spool(pacs_settings.spool_path, min_free_mb=0), Ledger(pacs_settings.ledger_path), collection="c")
    cfg = ReceiverConfig(host="127.0.0.1", port=free_port(), allow_aets=("MODALITY",))
    metrics_port = free_port()
    serve_metrics(pacs_settings, metrics_port)
    with Receiver(intake, cfg, audit=audit) as rx:
        files = [i.path for i in rg1] + [dicom_dir / "RG3_J2KR.dcm"]  # the tibia is refused (not a chest film)
        send(files, "127.0.0.1", rx.port, called="CXR", calling="MODALITY")
        with pytest.raises(ConnectionRefusedError):
            send(files[:1], "127.0.0.1", rx.port, called="CXR", calling="STRANGER")
        wait_for(lambda: len(audit.records()) == 2, timeout=10, what="two association records")
    done, refused = sorted(audit.records(), key=lambda r: r.outcome)
    assert (done.actor, done.action, done.outcome, done.client) == ("ae:MODALITY", "dicom.associate", "ok", "127.0.0.1")
    assert done.objects["instances"] == len(files) and done.objects["stored"] == len(files) - 1
    assert sum(done.objects["statuses"].values()) == len(files) and len(done.objects["statuses"]) == 2
    assert (refused.actor, refused.outcome) == ("ae:STRANGER", "refused") and refused.objects["reason"]
    raw = b"".join(p.read_bytes() for p in pacs_settings.data_dir.glob("audit.sqlite3*"))
    for inst in rg1:
        assert inst.sop_uid.encode() not in raw
    assert audit.verify().ok
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:  # noqa: S310
        text = r.read().decode()
    assert 'cxr_dicom_cstore_total{status="0x0000"}' in text and 'cxr_dicom_cstore_total{status="0xA901"}' in text
    assert 'cxr_ledger_items{state="received"}' in text
