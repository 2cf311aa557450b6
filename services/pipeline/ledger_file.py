"""The ledger's SQLite file: one connection per thread, WAL and synchronous=FULL, immediate transactions; and the
two small tables beside the items: PACS pull cursors and the opaque source references of stored payloads.

services.pipeline.ledger.Ledger builds the items (what happened to each image) on top of this.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from services.pipeline.ledger_schema import ensure_schema


class LedgerFile:
    """The ledger file at `path`; safe to use from several threads and processes at once."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._timeout = busy_timeout_s
        self._local = threading.local()
        ensure_schema(self._conn())  # creates the tables, or migrates an older ledger in place

    # -- connections: one per thread (sqlite3 connections must not cross threads)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- pull cursors (committed only after what they cover is durably recorded)

    def cursor(self, name: str) -> str | None:
        rec = self._conn().execute("SELECT value FROM cursors WHERE name=?", (name,)).fetchone()
        return rec["value"] if rec else None

    def set_cursor(self, name: str, value: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO cursors(name, value, updated_at) VALUES (?,?,?)"
                " ON CONFLICT(name) DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at",
                (name, value, time.time()),
            )

    # -- opaque source references: payloads carry the ref, this machine knows the path

    def put_ref(self, ref: str, path: str | Path) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO refs(ref, path, created_at) VALUES (?,?,?)"
                " ON CONFLICT(ref) DO UPDATE SET path=excluded.path",
                (ref, str(path), time.time()),
            )

    def put_refs(self, pairs: Iterable[tuple[str, str | Path]]) -> None:
        now = time.time()
        with self._tx() as db:
            db.executemany(
                "INSERT INTO refs(ref, path, created_at) VALUES (?,?,?)"
                " ON CONFLICT(ref) DO UPDATE SET path=excluded.path",
                [(r, str(p), now) for r, p in pairs],
            )

    def resolve_ref(self, ref: str) -> Path | None:
        rec = self._conn().execute("SELECT path FROM refs WHERE ref=?", (ref,)).fetchone()
        return Path(rec["path"]) if rec else None
