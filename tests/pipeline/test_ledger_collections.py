"""A ledger item per (collection, instance): the same instance lands in a second collection, and a ledger written by
the code before this change (tests/pipeline/data/ledger-v1.sqlite, made with cxr at 743a686) is migrated in place."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from services.pipeline.ledger import Ledger, file_key, sop_key
from services.pipeline.ledger_schema import VERSION

V1 = Path(__file__).parent / "data" / "ledger-v1.sqlite"
UID = "1.2.840.113619.2.1"


def _v1_copy(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.sqlite3"
    shutil.copy(V1, path)
    return path


def test_the_same_instance_is_one_item_per_collection_with_its_own_state(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "l.sqlite3")
    key = sop_key("1.2.3")
    assert led.record(key, "/spool/1.2.3.dcm", origin="receiver", collection="cxr")
    led.claim([key], max_attempts=3, collection="cxr")
    led.mark_indexed([(key, "pid-1")], collection="cxr")
    # received again for another collection: a new item there, the first one untouched
    assert led.record(key, "/spool/1.2.3.dcm", origin="pull", collection="pacs")
    assert not led.record(key, "/spool/1.2.3.dcm", origin="pull", collection="pacs")  # idempotent within it
    assert led.get(key, "cxr").state == "indexed" and led.get(key, "pacs").state == "received"
    assert [(i.collection, i.key) for i in led.due(requeue_after_s=3600)] == [("pacs", key)]
    todo, _ = led.claim([key], max_attempts=3, collection="pacs")
    assert [(i.collection, i.state) for i in todo] == [("pacs", "processing")]
    led.mark_failed(key, "decode", "truncated", permanent=True, collection="pacs")
    assert led.get(key, "cxr").state == "indexed" and led.get(key, "pacs").state == "failed"
    assert led.retry([key]) == [key] and led.get(key, "pacs").state == "received"
    assert led.get(key, "cxr").state == "indexed"  # retry re-arms failed items only


def test_a_ledger_from_the_previous_version_is_migrated_in_place(tmp_path: Path) -> None:
    path = _v1_copy(tmp_path)
    with sqlite3.connect(path) as db:  # what the fixture is: the old schema, keyed by `key` alone
        assert db.execute("PRAGMA user_version").fetchone()[0] == 0
        before = sorted(db.execute("SELECT key, collection, state, attempts, point_id, extra FROM items"))
    assert len(before) == 5

    led = Ledger(path)
    after = sorted(
        (i.key, i.collection, i.state, i.attempts, i.point_id, i.extra)
        for i in led.items([row[0] for row in before], collection="cxr")
    )
    assert [(k, c, s, a, p) for k, c, s, a, p, _ in after] == [(k, c, s, a, p) for k, c, s, a, p, _ in before]
    assert led.get(file_key("/studies/a.png", b"fixture-salt"), "cxr").extra == {"label": "normal"}
    assert led.cursor("pull:orthanc") == "42"
    assert led.resolve_ref("file:0123456789abcdef0123456789abcdef") == Path("/studies/b.png")
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == VERSION
        pk = [r[1] for r in sorted(db.execute("PRAGMA table_info(items)"), key=lambda r: r[5]) if r[5]]
        assert pk == ["collection", "key"]
        assert not db.execute("SELECT 1 FROM sqlite_master WHERE name='items_v1'").fetchone()

    # behaviour within the collection is as before: the indexed instance stays indexed when resent
    indexed = sop_key(UID + ".1")
    assert not led.record(indexed, f"/spool/{UID}.1.dcm", origin="receiver", collection="cxr")
    assert led.get(indexed, "cxr").point_id == "00000000-0000-5000-8000-000000000001"
    # ...and it can now land in a second collection
    assert led.record(indexed, f"/spool/{UID}.1.dcm", origin="pull", collection="pacs")
    # a message queued before the upgrade names no collection: its keys are claimed wherever they wait
    queued = sop_key(UID + ".2")
    todo, _ = led.claim([queued], max_attempts=5, collection=None)
    assert [(i.collection, i.key, i.attempts) for i in todo] == [("cxr", queued, 1)]
    # the legacy path key is still re-keyed before anything is sent
    assert led.rekey_legacy_files(b"fixture-salt") == 1
    assert led.get(file_key("/studies/legacy.png", b"fixture-salt"), "cxr") is not None
    led.close()

    Ledger(path).close()  # opening again migrates nothing
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 6
