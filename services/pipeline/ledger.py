"""The ingestion ledger: one durable record per image that was handed to cxr, and the PACS pull cursors.

Why SQLite: it is the smallest real component that keeps the guarantees. Every process on the machine (receiver,
workers, API, CLI) opens the same file; WAL mode lets readers run beside the one writer, `synchronous=FULL` makes
each commit durable before it returns, and a unique key (the SOP Instance UID, or a salted hash of the file
path) makes every state change idempotent. Redis stays a delivery channel only: if it loses a message, the sweep
finds the item here and sends it again. The spool directory holds the bytes; this file holds what happened to
them. Keys travel in broker messages and so carry no path; paths stay in this file.

States: received -> queued -> processing -> indexed | failed. `attempts` counts starts, so a task that kills its
worker every time is stopped after `max_attempts` instead of being redelivered forever.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from services.pipeline.ledger_file import LedgerFile, put_cursor
from services.pipeline.ledger_rows import Item, _record, _row
from services.pipeline.refs import file_ref, sop_key

__all__ = ["STATES", "TERMINAL", "Item", "Ledger", "file_key", "sop_key"]

STATES = ("received", "queued", "processing", "indexed", "failed")
TERMINAL = ("indexed", "failed")
# Failures only a person can resolve: `retry` leaves them failed. A UID conflict (services/pacs/intake.py) is a second
# instance under a SOP Instance UID the spool holds with other pixels or another patient; indexing it would put
# one patient's film under another's point. A forgotten one (services.governance.tombstones) was erased on request.
HELD_STAGES = ("uid-conflict", "forgotten")


LEGACY_FILE_PREFIX = "file:/"  # keys of ledgers written before file keys were opaque: 'file:<absolute path>'


def file_key(path: str | Path, salt: bytes) -> str:
    """The key of a submitted file: 'file:<32 hex>', the salted HMAC of its absolute path, the same value as the
    payload's `source_ref` (services.pipeline.refs.file_ref). Keys travel in broker messages (Redis) and hospital
    exports name folders after patients, so a key never holds the path; the path stays in the row."""
    return file_ref(path, salt)


def _where(collection: str | None) -> tuple[str, tuple[str, ...]]:
    """The row filter of a key in `collection`, or in every collection when None (a message from before
    collections had their own rows, or a tool acting on a key wherever it is)."""
    return (" AND collection=?", (collection,)) if collection is not None else ("", ())


class Ledger(LedgerFile):
    """The ledger file at `path`; safe to use from several threads and processes at once. An item is one key (an
    instance or a file) in one collection: indexing the same instance into two collections makes two items."""

    # -- writing

    def record(
        self,
        key: str,
        path: str | Path,
        *,
        origin: str,
        collection: str,
        extra: dict[str, Any] | None = None,
        update: bool = False,
    ) -> bool:
        """Note that an image arrived. Idempotent: a resent instance that is pending or indexed stays as it is
        (True only when the row is new, or re-armed by `update`, or a failed one came back, or an indexed file
        came back changed: a different `stat` in `extra`)."""
        with self._tx() as db:
            return _record(db, time.time(), key, path, origin, collection, extra, update)

    def record_many(
        self,
        entries: Iterable[tuple[str, str | Path, dict[str, Any] | None]],
        *,
        origin: str,
        collection: str,
        update: bool = False,
    ) -> list[bool]:
        """`record` for many (key, path, extra) entries in one transaction: one fsync instead of one per file
        (3 ms each here, which made submitting 1,000 files cost 3 s)."""
        now = time.time()
        with self._tx() as db:
            return [_record(db, now, key, path, origin, collection, extra, update) for key, path, extra in entries]

    def rekey_legacy_files(self, salt: bytes) -> int:
        """Give rows keyed 'file:<absolute path>' (ledgers from before opaque keys) their `file_key`, so that no
        path is ever sent to the broker; a row whose new key already exists is dropped (that row is the same
        file). Returns how many rows changed. Cheap when there are none: one range scan of the primary key."""
        found = (
            self._conn()
            .execute("SELECT collection, key FROM items WHERE key >= ? AND key < ?", (LEGACY_FILE_PREFIX, "file:0"))
            .fetchall()
        )
        if not found:
            return 0
        with self._tx() as db:
            for rec in found:
                new, old = file_key(rec["key"][len("file:") :], salt), (rec["collection"], rec["key"])
                db.execute("UPDATE OR IGNORE items SET key=? WHERE collection=? AND key=?", (new, *old))
                db.execute("DELETE FROM items WHERE collection=? AND key=?", old)
        return len(found)

    def mark_queued(self, keys: Sequence[str], *, collection: str | None) -> None:
        now = time.time()
        where, args = _where(collection)
        with self._tx() as db:
            db.executemany(
                # queued_at is when the item started waiting: a re-send of a still-queued item keeps it, so a
                # stalled queue shows (deploy/healthcheck.py) however often the sweep re-sends
                "UPDATE items SET state='queued', queued_at=CASE WHEN state='queued' AND queued_at IS NOT NULL"
                " THEN queued_at ELSE ? END, updated_at=? WHERE key=?" + where + " AND state IN"
                " ('received','queued','processing')",
                [(now, now, k, *args) for k in keys],
            )

    def claim(self, keys: Sequence[str], *, max_attempts: int, collection: str | None) -> tuple[list[Item], list[Item]]:
        """Start work on `keys` of `collection`: returns (to_do, given_up). Items already indexed (and not in
        update mode) or failed are left out; each claimed item's `attempts` goes up by one, and one that has
        already been started `max_attempts` times is marked failed ('gave-up') instead of being run again."""
        now = time.time()
        todo: list[Item] = []
        gave_up: list[Item] = []
        where, args = _where(collection)
        with self._tx() as db:
            for key in keys:
                for rec in db.execute("SELECT * FROM items WHERE key=?" + where, (key, *args)).fetchall():
                    row = (rec["collection"], key)
                    if rec["state"] in TERMINAL:
                        continue
                    if rec["attempts"] >= max_attempts:
                        last = rec["reason"] or "worker lost"
                        db.execute(
                            "UPDATE items SET state='failed', stage='gave-up', reason=?, updated_at=?"
                            " WHERE collection=? AND key=?",
                            (f"gave up after {rec['attempts']} attempt(s); last error: {last}", now, *row),
                        )
                        gave_up.append(self._one(db, *row))
                        continue
                    db.execute(
                        "UPDATE items SET state='processing', attempts=attempts+1, updated_at=?"
                        " WHERE collection=? AND key=?",
                        (now, *row),
                    )
                    todo.append(self._one(db, *row))
        return todo, gave_up

    @staticmethod
    def _one(db: sqlite3.Connection, collection: str, key: str) -> Item:
        return _row(db.execute("SELECT * FROM items WHERE collection=? AND key=?", (collection, key)).fetchone())

    def mark_indexed(self, done: Iterable[tuple[str, str]], *, collection: str | None) -> None:
        """(key, point_id) pairs of `collection` that are now searchable."""
        now = time.time()
        where, args = _where(collection)
        with self._tx() as db:
            db.executemany(
                "UPDATE items SET state='indexed', point_id=?, stage=NULL, reason=NULL, update_mode=0,"
                " indexed_at=?, updated_at=? WHERE key=?" + where,
                [(pid, now, now, key, *args) for key, pid in done],
            )

    def mark_failed(self, key: str, stage: str, reason: str, *, permanent: bool = True, collection: str | None) -> None:
        """A permanent failure (bad file) ends the item; a transient one only records the reason, leaving it
        to be retried (its attempts are already counted)."""
        now = time.time()
        state = "failed" if permanent else "received"
        where, args = _where(collection)
        with self._tx() as db:
            db.execute(
                "UPDATE items SET state=?, stage=?, reason=?, permanent=?, updated_at=? WHERE key=?" + where,
                (state, stage, reason[:2000], int(permanent), now, key, *args),
            )

    def release_processing(self, *, touched_before: float, reason: str) -> int:
        """Hand 'processing' items untouched since `touched_before` back to the sweep (state 'received', attempts
        kept): their worker died then. Returns how many."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE items SET state='received', stage='worker', reason=?, updated_at=?"
                " WHERE state='processing' AND updated_at <= ?",
                (reason[:2000], time.time(), touched_before),
            )
            return cur.rowcount

    def record_failed(
        self,
        key: str,
        path: str | Path,
        *,
        origin: str,
        collection: str,
        stage: str,
        reason: str,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Record an item that is failed from the start (one transaction, so it is never 'received', not even for
        the sweep's glance): insert it, or refresh the row of the same key."""
        now = time.time()
        blob = json.dumps(extra or {}, sort_keys=True)
        with self._tx() as db:
            db.execute(
                "INSERT INTO items(key, path, origin, collection, state, stage, reason, permanent, extra, received_at,"
                " updated_at) VALUES (?,?,?,?,'failed',?,?,1,?,?,?) ON CONFLICT(collection, key) DO UPDATE SET"
                " path=excluded.path, origin=excluded.origin, state='failed', stage=excluded.stage,"
                " reason=excluded.reason, permanent=1, extra=excluded.extra, updated_at=excluded.updated_at",
                (key, str(path), origin, collection, stage, reason[:2000], blob, now, now),
            )

    def retry(self, keys: Sequence[str] | None = None, *, collection: str | None = None) -> list[str]:
        """Re-arm failed items (all of them when `keys` is None; in every collection unless `collection`):
        attempts back to 0, state received. Returns the keys re-armed. Items failed at a HELD_STAGES stage stay."""
        now = time.time()
        where, args = _where(collection)
        with self._tx() as db:
            rows = db.execute(
                "SELECT collection, key FROM items WHERE state='failed'"
                f" AND coalesce(stage, '') NOT IN ({','.join('?' * len(HELD_STAGES))})" + where,
                (*HELD_STAGES, *args),
            ).fetchall()
            found = [(r["collection"], r["key"]) for r in rows if keys is None or r["key"] in set(keys)]
            db.executemany(
                "UPDATE items SET state='received', attempts=0, stage=NULL, reason=NULL, permanent=0,"
                " queued_at=NULL, updated_at=? WHERE collection=? AND key=?",
                [(now, *row) for row in found],
            )
        return list(dict.fromkeys(key for _, key in found))

    # -- reading

    def get(self, key: str, collection: str | None = None) -> Item | None:
        """The item of `key` in `collection` (None: in any collection, the first received)."""
        where, args = _where(collection)
        rec = (
            self._conn()
            .execute("SELECT * FROM items WHERE key=?" + where + " ORDER BY received_at LIMIT 1", (key, *args))
            .fetchone()
        )
        return _row(rec) if rec else None

    def items(self, keys: Sequence[str], collection: str | None = None) -> list[Item]:
        """The items of `keys` (in `collection`, or every item of each key), in the order of `keys`."""
        where, args = _where(collection)
        db = self._conn()
        return [_row(r) for k in keys for r in db.execute("SELECT * FROM items WHERE key=?" + where, (k, *args))]

    def due(self, *, requeue_after_s: float, limit: int = 10_000) -> list[Item]:
        """Items to (re-)send: received ones, and queued or processing ones untouched for `requeue_after_s`
        (their message or worker was lost). Oldest first."""
        cutoff = time.time() - requeue_after_s
        recs = self._conn().execute(
            "SELECT * FROM items WHERE state='received' OR (state IN ('queued','processing') AND updated_at < ?)"
            " ORDER BY received_at LIMIT ?",
            (cutoff, limit),
        )
        return [_row(r) for r in recs]

    def release_files(self, origin: str, *, before: float, release: Callable[[str], bool]) -> int:
        """Call `release(path)` on the files of `origin` items done in every collection (indexed or failed) and
        last touched after the previous call's bound and up to `before`, under the write lock (no item can be
        re-armed meanwhile); how many it took. A cursor keeps the bound, so a file is offered once each time it is
        finished (a re-armed item is touched again), not on every call for as long as its rows exist."""
        name = f"released:{origin}"
        with self._tx() as db:
            rec = db.execute("SELECT value FROM cursors WHERE name=?", (name,)).fetchone()
            after = float(rec["value"]) if rec else 0.0
            recs = db.execute(
                "SELECT path, MAX(updated_at) AS t FROM items WHERE origin=? GROUP BY path"
                " HAVING SUM(state NOT IN ('indexed','failed'))=0 AND t > ? AND t <= ?",
                (origin, after, before),
            ).fetchall()
            taken = sum(bool(release(r["path"])) for r in recs)
            put_cursor(db, name, repr(max(after, before)))
        return taken

    def has_file(self, origin: str, path: str | Path) -> bool:
        """True when some item of `origin` (any collection) has its bytes at `path`."""
        sql = "SELECT 1 FROM items WHERE origin=? AND path=? LIMIT 1"
        return self._conn().execute(sql, (origin, str(path))).fetchone() is not None

    def not_indexed(self, *, limit: int = 100_000) -> list[Item]:
        """Items not (or not yet) indexed, in any state and collection: what a forget must look inside."""
        recs = self._conn().execute("SELECT * FROM items WHERE state != 'indexed' LIMIT ?", (limit,))
        return [_row(r) for r in recs]

    def erase(self, keys: Iterable[str], refs: Iterable[str]) -> int:
        """Delete the items of `keys` in every collection, their reports, and the source refs `refs` (cxr forget);
        item rows deleted."""
        keys, refs = sorted(set(keys)), sorted(set(refs))
        with self._tx() as db:
            gone = sum(db.execute("DELETE FROM items WHERE key=?", (k,)).rowcount for k in keys)
            db.executemany("DELETE FROM reports WHERE key=?", [(k,) for k in keys])  # its pending or sent reports
            db.executemany("DELETE FROM refs WHERE ref=?", [(r,) for r in refs])
        self.scrub()
        return gone

    def in_flight(self, *, limit: int) -> int:
        """How many items are received, queued or processing, counted up to `limit` (an index range scan: the
        index writer asks after every batch whether anything besides its own pending points is on the way)."""
        rec = (
            self._conn()
            .execute(
                "SELECT COUNT(*) AS n FROM (SELECT 1 FROM items WHERE state IN ('received','queued','processing')"
                " LIMIT ?)",
                (int(limit),),
            )
            .fetchone()
        )
        return int(rec["n"])

    def oldest_queued_at(self) -> float | None:
        """When the longest-waiting 'queued' item was first queued (None when nothing is queued)."""
        rec = self._conn().execute("SELECT MIN(queued_at) AS t FROM items WHERE state='queued'").fetchone()
        return rec["t"]

    def started_or_indexed_since(self, seconds: float) -> int:
        """How many items were claimed, indexed or failed in the last `seconds`: whether the queue moves."""
        cutoff = time.time() - seconds
        rec = (
            self._conn()
            .execute(
                "SELECT COUNT(*) AS n FROM items WHERE state IN ('processing','indexed','failed') AND updated_at >= ?",
                (cutoff,),
            )
            .fetchone()
        )
        return int(rec["n"])

    def failures(self, *, limit: int = 1000) -> list[Item]:
        recs = self._conn().execute(
            "SELECT * FROM items WHERE state='failed' ORDER BY updated_at DESC LIMIT ?", (limit,)
        )
        return [_row(r) for r in recs]

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for rec in self._conn().execute("SELECT state, COUNT(*) AS n FROM items GROUP BY state"):
            out[rec["state"]] = rec["n"]
        return out

    def indexed_since(self, seconds: float) -> int:
        """How many items became searchable in the last `seconds` (the recent rate's numerator)."""
        cutoff = time.time() - seconds
        rec = self._conn().execute("SELECT COUNT(*) AS n FROM items WHERE indexed_at >= ?", (cutoff,)).fetchone()
        return int(rec["n"])
