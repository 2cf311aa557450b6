"""The receiver's limits against real pynetdicom senders and raw sockets: an instance over the byte cap is answered
0xA700 while the rest of its association lands; an AE title bound to a network is refused from another address,
with the reason in the log; idle TCP connections neither take association slots nor linger past the ACSE timeout,
and a refusal at the connection ceiling is logged as what it is."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from services.errors import ConfigError
from services.pacs.acceptance import LEDGER_UNAVAILABLE, OUT_OF_RESOURCES, SUCCESS
from services.pacs.admission import parse_aets, parse_allow_list
from services.pacs.intake import Intake, reconcile_spool
from services.pacs.receiver import Receiver, ReceiverConfig
from services.pacs.spool import Spool
from services.pipeline.ledger import Ledger, sop_key
from tests.pacs.conftest import dx_files, ledger_keys
from tests.pacs.dicom_factory import save, send
from tests.services import free_port, wait_for


def _receiver(settings, **cfg) -> Receiver:  # noqa: ANN001, ANN003
    intake = Intake(Spool(settings.spool_path, min_free_mb=0), Ledger(settings.ledger_path), collection="cxr")
    cfg.setdefault("allow_aets", ("MODALITY",))
    return Receiver(intake, ReceiverConfig(host="127.0.0.1", port=free_port(), **cfg))


def _big_instance(template: Path, out: Path, side: int = 1100) -> Path:
    """An uncompressed DX of `side`^2 noisy 8-bit pixels (about side^2 bytes), its own UID."""
    ds = pydicom.dcmread(template)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    pixels = np.random.default_rng(7).integers(0, 255, (side, side), dtype=np.uint8)
    ds.Rows = ds.Columns = side
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OB"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["big"])
    return save(ds, out)


def test_an_instance_over_the_cap_gets_a700_and_the_rest_of_the_association_lands(
    pacs_settings, dx_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="cxr.pacs")
    small = dx_files(dx_dir, 2)
    big = _big_instance(small[0], tmp_path / "big")
    assert big.stat().st_size > 2**20
    # 16 KiB PDUs: the big one arrives in ~75 PDUs and is dropped as it passes the 1 MiB cap
    rx = _receiver(pacs_settings, max_pdu=16_384, max_instance_bytes=2**20)
    with rx:
        statuses = send([small[0], big, small[1]], "127.0.0.1", rx.port, called="CXR", calling="MODALITY")
    big_uid = str(pydicom.dcmread(big, stop_before_pixels=True).SOPInstanceUID)
    assert statuses.pop(big_uid) == OUT_OF_RESOURCES
    assert set(statuses.values()) == {SUCCESS} and len(statuses) == 2
    assert ledger_keys(pacs_settings) == {sop_key(u) for u in statuses}
    assert {p.stem for p in Spool(pacs_settings.spool_path).instances()} == set(statuses)
    assert rx.stats.oversized == 1 and rx.stats.failed == {OUT_OF_RESOURCES: 1}
    assert "dropping the rest as it arrives" in caplog.text  # never held whole in memory


def test_the_right_title_from_the_wrong_address_is_refused_and_the_log_says_why(
    pacs_settings, dx_dir: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="cxr.pacs")
    files = dx_files(dx_dir, 1)
    with _receiver(pacs_settings, allow_aets=("MODALITY@10.9.9.0/24", "ORTHANC@127.0.0.1", "ANYWHERE")) as rx:
        with pytest.raises(ConnectionRefusedError):
            send(files, "127.0.0.1", rx.port, called="CXR", calling="MODALITY")
        assert set(send(files, "127.0.0.1", rx.port, called="CXR", calling="ORTHANC").values()) == {SUCCESS}
        assert set(send(files, "127.0.0.1", rx.port, called="CXR", calling="ANYWHERE").values()) == {SUCCESS}
    assert rx.stats.rejected_associations == 1
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusals == [
        "association from MODALITY at 127.0.0.1 refused: calling AE title 'MODALITY' is allowed only from"
        " 10.9.9.0/24, not from 127.0.0.1"
    ]


# Another process writing to the ledger: it takes SQLite's write lock and keeps it until told to go.
HOLD_LEDGER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("held", flush=True)
sys.stdin.readline()
"""


def test_a_ledger_that_cannot_record_gets_a701_and_the_resend_lands(pacs_settings, dx_dir: Path):
    """0xA701: the instance is durable in the spool, but the ledger cannot take its row (another process holds the
    write lock past the busy timeout). The answer is never success; the file is complete (a restart's
    reconciliation records it), and the sender's resend lands once the ledger is free."""
    files = dx_files(dx_dir, 2)
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    ledger = Ledger(pacs_settings.ledger_path, busy_timeout_s=0.5)  # dicom-listen waits 30 s; the answer is the same
    spool = Spool(pacs_settings.spool_path, min_free_mb=0)
    rx = Receiver(
        Intake(spool, ledger, collection="cxr"),
        ReceiverConfig(host="127.0.0.1", port=free_port(), allow_aets=("MODALITY",)),
    )
    with rx:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_LEDGER, str(pacs_settings.ledger_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout.readline().strip() == "held"
            held = send(files[:1], "127.0.0.1", rx.port, called="CXR", calling="MODALITY")
        finally:
            holder.kill()
            holder.wait(timeout=30)
        assert held == {uids[0]: LEDGER_UNAVAILABLE}
        assert {p.stem for p in spool.instances()} == {uids[0]} and ledger_keys(pacs_settings) == set()
        assert reconcile_spool(spool, ledger, collection="cxr") == 1  # what the next start would do
        assert ledger_keys(pacs_settings) == {sop_key(uids[0])}
        resent = send(files, "127.0.0.1", rx.port, called="CXR", calling="MODALITY")
    assert resent == dict.fromkeys(uids, SUCCESS)
    assert ledger_keys(pacs_settings) == {sop_key(u) for u in uids}
    assert rx.stats.failed == {LEDGER_UNAVAILABLE: 1} and (rx.stats.stored, rx.stats.duplicates) == (2, 1)


def _idle(port: int, n: int) -> list[socket.socket]:
    """`n` TCP connections that never send a byte."""
    return [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(n)]


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except OSError:
        return True


def test_idle_connections_take_no_association_slot_and_are_closed_after_the_acse_timeout(
    pacs_settings, dx_dir: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="cxr.pacs")
    files = dx_files(dx_dir, 2)
    rx = _receiver(pacs_settings, max_associations=2, max_connections=64, acse_timeout_s=3.0)
    with rx:
        idle = _idle(rx.port, 8)  # four times the association limit
        try:
            t0 = time.monotonic()
            statuses = send(files, "127.0.0.1", rx.port, called="CXR", calling="MODALITY")
            assert set(statuses.values()) == {SUCCESS}
            assert time.monotonic() - t0 < 10, "a real sender waited behind idle sockets"
            t0 = time.monotonic()
            for sock in idle:  # the receiver hangs up on each once the ACSE timeout has passed
                sock.settimeout(max(0.1, 15 - (time.monotonic() - t0)))
                assert _closed_by_peer(sock)
            assert time.monotonic() - t0 < 15
        finally:
            for sock in idle:
                sock.close()
    assert rx.stats.rejected_associations == 0
    assert "refused" not in caplog.text


def test_at_the_connection_ceiling_the_refusal_says_so_and_a_sender_gets_in_once_idle_ones_time_out(
    pacs_settings, dx_dir: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="cxr.pacs")
    files = dx_files(dx_dir, 1)
    rx = _receiver(pacs_settings, max_connections=6, acse_timeout_s=3.0)
    with rx:
        idle = _idle(rx.port, 6)
        try:
            wait_for(lambda: len(rx._server.active_associations) >= 6, timeout=10, what="idle connections")
            with pytest.raises(ConnectionRefusedError):
                send(files, "127.0.0.1", rx.port, called="CXR", calling="MODALITY")
            t0, statuses = time.monotonic(), None
            while statuses is None and time.monotonic() - t0 < 20:  # a sender retrying, as modalities do
                try:
                    statuses = send(files, "127.0.0.1", rx.port, called="CXR", calling="MODALITY")
                except ConnectionRefusedError:
                    time.sleep(0.5)
            assert statuses is not None and set(statuses.values()) == {SUCCESS}
            assert time.monotonic() - t0 < 20
        finally:
            for sock in idle:
                sock.close()
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusals and all("local limit exceeded" in m and "CXR_DICOM_MAX_CONNECTIONS" in m for m in refusals)
    assert "not on the allow-list" not in caplog.text and "not recognised" not in caplog.text


def test_allow_list_entries_are_parsed_and_checked():
    callers = {c.aet: c for c in parse_allow_list(["ORTHANC@10.0.0.5,CR_ROOM1@10.1.2.0/24", "CR_ROOM1@10.3.0.0/16"])}
    assert callers["ORTHANC"].admits("10.0.0.5") and not callers["ORTHANC"].admits("10.0.0.6")
    assert callers["ORTHANC"].admits("::ffff:10.0.0.5")  # an IPv4 peer on a dual-stack socket
    assert callers["CR_ROOM1"].admits("10.1.2.77") and callers["CR_ROOM1"].admits("10.3.9.9")
    assert not callers["CR_ROOM1"].admits("10.1.3.1")
    anywhere = parse_allow_list("PACS@10.0.0.5,PACS")[0]  # listed plain once: any address
    assert anywhere.networks == () and anywhere.admits("192.0.2.1")
    assert parse_allow_list("LOCAL@localhost")[0].admits("127.0.0.1")
    assert parse_aets(["A, B@10.0.0.1", "A"]) == ("A", "B@10.0.0.1")
    for bad in ("WAY_TOO_LONG_AE_TITLE", "X@", "X@no-such-host.invalid"):
        with pytest.raises(ConfigError):
            parse_allow_list(bad)
