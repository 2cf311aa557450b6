"""The ledger and the spool: durable, idempotent on the key, bounded retries; whole files or none."""

from __future__ import annotations

import multiprocessing as mp
import os
import stat
from pathlib import Path

import pytest

from services.pacs.spool import Spool, SpoolFullError, valid_uid
from services.pipeline.ledger import Ledger, file_key, sop_key


def test_record_is_idempotent_and_a_resend_does_not_rearm(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "l.sqlite3")
    key = sop_key("1.2.3")
    assert led.record(key, "/spool/1.2.3.dcm", origin="receiver", collection="cxr")
    assert not led.record(key, "/spool/1.2.3.dcm", origin="receiver", collection="cxr")
    (todo, gave_up) = led.claim([key], max_attempts=3, collection="cxr")
    assert [i.key for i in todo] == [key] and not gave_up
    led.mark_indexed([(key, "pid-1")], collection="cxr")
    assert not led.record(key, "/spool/1.2.3.dcm", origin="receiver", collection="cxr")  # resent after indexing
    assert led.get(key).state == "indexed" and led.get(key).point_id == "pid-1"
    assert led.claim([key], max_attempts=3, collection="cxr") == ([], [])  # a redelivered task does nothing
    assert led.record(key, "/spool/1.2.3.dcm", origin="receiver", collection="cxr", update=True)
    assert led.get(key).state == "received" and led.get(key).update


def test_attempts_are_bounded_then_dead_letter_then_retry(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "l.sqlite3")
    key = file_key(tmp_path / "a.png", b"test-salt")
    led.record(key, tmp_path / "a.png", origin="file", collection="cxr", extra={"label": "normal"})
    for _ in range(2):  # two starts that crashed their worker (nothing marked afterwards)
        todo, _ = led.claim([key], max_attempts=2, collection="cxr")
        assert len(todo) == 1
    todo, gave_up = led.claim([key], max_attempts=2, collection="cxr")
    assert not todo and gave_up[0].stage == "gave-up" and "2 attempt" in gave_up[0].reason
    assert [i.key for i in led.failures()] == [key] and led.counts()["failed"] == 1
    assert led.retry() == [key]
    item = led.get(key)
    assert item.state == "received" and item.attempts == 0 and item.extra == {"label": "normal"}


def test_transient_failure_leaves_the_item_due_permanent_ends_it(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "l.sqlite3")
    for uid in ("1.1", "1.2"):
        led.record(sop_key(uid), f"/s/{uid}.dcm", origin="receiver", collection="cxr")
    led.mark_queued([sop_key("1.1"), sop_key("1.2")], collection="cxr")
    assert led.due(requeue_after_s=3600) == []  # queued recently: not due
    assert {i.key for i in led.due(requeue_after_s=1e-9)} == {sop_key("1.1"), sop_key("1.2")}  # lost messages
    led.mark_failed(sop_key("1.1"), "upsert", "store locked", permanent=False, collection="cxr")
    led.mark_failed(sop_key("1.2"), "decode", "truncated", permanent=True, collection="cxr")
    assert [i.key for i in led.due(requeue_after_s=3600)] == [sop_key("1.1")]
    assert led.get(sop_key("1.2")).reason == "truncated"


def _hammer(path: str, start: int) -> None:
    led = Ledger(Path(path))
    for i in range(start, start + 50):
        led.record(sop_key(f"9.{i % 60}"), f"/s/{i}", origin="receiver", collection="cxr")


def test_several_processes_write_one_ledger(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    Ledger(path)
    procs = [mp.get_context("spawn").Process(target=_hammer, args=(str(path), s)) for s in (0, 25, 50)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert Ledger(path).counts()["received"] == 60  # 150 records of 60 distinct keys


def test_cursors_and_refs(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "l.sqlite3")
    assert led.cursor("orthanc") is None
    led.set_cursor("orthanc", "17")
    led.set_cursor("orthanc", "42")
    assert Ledger(tmp_path / "l.sqlite3").cursor("orthanc") == "42"
    led.put_ref("file:abc", tmp_path / "x.png")
    assert led.resolve_ref("file:abc") == tmp_path / "x.png" and led.resolve_ref("nope") is None


def test_spool_writes_whole_files_named_by_uid(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", min_free_mb=0)
    path = spool.write("1.2.840.5", b"DICM-bytes")
    assert path == tmp_path / "spool" / "1.2.840.5.dcm" and path.read_bytes() == b"DICM-bytes"
    spool.write("1.2.840.5", b"resent")  # same UID, same file
    assert [p.name for p in spool.instances()] == ["1.2.840.5.dcm"] and path.read_bytes() == b"resent"
    assert list(spool.incoming.iterdir()) == []
    os.mkfifo(tmp_path / "spool" / "9.9.dcm")  # never opened, never listed
    assert stat.S_ISFIFO((tmp_path / "spool" / "9.9.dcm").stat().st_mode)
    assert [p.name for p in spool.instances()] == ["1.2.840.5.dcm"]


def test_spool_refuses_bad_uids_and_low_space(tmp_path: Path) -> None:
    for bad in ("../../etc/passwd", "1.2/3", "", "1." * 40, "abc"):
        assert not valid_uid(bad)
        with pytest.raises(ValueError):
            Spool(tmp_path).path_for(bad)
    huge = Spool(tmp_path / "s", min_free_mb=10**9)  # a watermark no disk meets
    with pytest.raises(SpoolFullError, match="watermark"):
        huge.write("1.2.3", b"x")
    assert not (tmp_path / "s" / "1.2.3.dcm").exists()


def test_spool_sweeps_stale_temp_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_mb=0)
    spool.ensure()
    stale = spool.incoming / "1.2.3.abc.tmp"
    stale.write_bytes(b"half")
    os.utime(stale, (0, 0))
    assert spool.sweep_incoming(older_than_s=60) == 1 and not stale.exists()


def test_legacy_path_keys_are_rekeyed_before_anything_is_sent(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "l.sqlite3")
    patient = tmp_path / "DOE^JOHN_MRN12345"
    old, both = patient / "a.png", patient / "b.png"
    led.record("file:" + str(old), old, origin="file", collection="cxr")  # as an older cxr keyed files
    led.record("file:" + str(both), both, origin="file", collection="cxr")
    led.record(file_key(both, b"s"), both, origin="file", collection="cxr")  # recorded again since
    led.record(sop_key("1.2.3"), "/spool/1.2.3.dcm", origin="receiver", collection="cxr")
    assert led.rekey_legacy_files(b"s") == 2
    keys = sorted(i.key for i in led.due(requeue_after_s=60))
    assert keys == sorted([file_key(old, b"s"), file_key(both, b"s"), sop_key("1.2.3")])
    assert not any("DOE" in k for k in keys) and led.get(file_key(old, b"s")).path == str(old)
    assert led.rekey_legacy_files(b"s") == 0
