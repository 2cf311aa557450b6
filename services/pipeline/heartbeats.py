"""Worker heartbeats in the ledger file, so that the sweep learns of a dead worker in seconds, not after
`requeue_after_s`.

A whole worker killed (SIGKILL, OOM, power) leaves items 'processing': those its embed task had claimed, and those
its index writer had upserted but not flushed (their message is already acknowledged, so Redis never brings them
back). Each `cxr worker` beats every `worker_heartbeat_s`; a row silent for `DEAD_AFTER_BEATS` beats is a dead
worker, and every 'processing' item untouched since its last beat goes back to 'received', which the sweep sends
at once. Items of live workers touched before that moment are sent too: harmless (tasks are idempotent), at the
cost of one attempt, and only when a worker died.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from pathlib import Path

from services.pipeline.ledger import Ledger

DEAD_AFTER_BEATS = 6

_SCHEMA = """
CREATE TABLE IF NOT EXISTS workers (
    id       TEXT PRIMARY KEY,
    pid      INTEGER NOT NULL,
    host     TEXT NOT NULL,
    queues   TEXT NOT NULL,
    started  REAL NOT NULL,
    beat_at  REAL NOT NULL
)
"""


def worker_id() -> str:
    """This process's heartbeat id: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeats:
    """The `workers` table of the ledger at `path`: beat, leave, and find the dead."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self._timeout = busy_timeout_s
        Ledger(self.path).close()  # creates the file (and its folder), or migrates an older one, first
        db = self._db()
        try:
            db.execute(_SCHEMA)
        finally:
            db.close()

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
        db.row_factory = sqlite3.Row
        return db

    def beat(self, wid: str, queues: str, *, now: float | None = None) -> None:
        stamp = time.time() if now is None else now
        db = self._db()
        try:
            db.execute(
                "INSERT INTO workers(id, pid, host, queues, started, beat_at) VALUES (?,?,?,?,?,?)"
                " ON CONFLICT(id) DO UPDATE SET beat_at=excluded.beat_at, queues=excluded.queues",
                (wid, os.getpid(), socket.gethostname(), queues, stamp, stamp),
            )
        finally:
            db.close()

    def leave(self, wid: str) -> None:
        """A clean stop: this worker finished or handed back what it held."""
        db = self._db()
        try:
            db.execute("DELETE FROM workers WHERE id=?", (wid,))
        finally:
            db.close()

    def reap(self, ledger: Ledger, *, interval_s: float) -> list[tuple[str, int]]:
        """Remove workers silent for DEAD_AFTER_BEATS beats and release the 'processing' items untouched since
        their last beat. Returns (worker id, items released) per dead worker."""
        cutoff = time.time() - DEAD_AFTER_BEATS * interval_s
        db = self._db()
        try:
            dead = db.execute("SELECT id, beat_at FROM workers WHERE beat_at < ?", (cutoff,)).fetchall()
            out = []
            for row in dead:
                n = ledger.release_processing(touched_before=row["beat_at"], reason=f"worker {row['id']} died")
                db.execute("DELETE FROM workers WHERE id=? AND beat_at=?", (row["id"], row["beat_at"]))
                out.append((row["id"], n))
            return out
        finally:
            db.close()
