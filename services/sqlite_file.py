"""A durable SQLite file shared by threads and processes: one connection per thread, WAL and synchronous=FULL (a
commit is on disk when it returns), immediate transactions (the write lock is taken at BEGIN, so two writers
never both read-then-write), secure_delete (deleted rows are overwritten; `scrub` also rewrites the file). The
ledger (services.pipeline.ledger_file) and the audit trail (services.governance.audit) are built on it."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class SqliteFile:
    """The SQLite file at `path`; `schema(conn)` creates or migrates its tables when it is first opened here."""

    def __init__(
        self, path: Path, schema: Callable[[sqlite3.Connection], object], *, busy_timeout_s: float = 30.0
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._timeout = busy_timeout_s
        self._local = threading.local()
        schema(self._conn())

    # -- connections: one per thread (sqlite3 connections must not cross threads)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA secure_delete=ON")  # a deleted row's bytes are overwritten, not left in free space
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

    def scrub(self) -> None:
        """Leave no copy of deleted rows in the files: rewrite the database (VACUUM: old page versions and free
        pages go) and empty the write-ahead log. Blocks writers while it runs; for erasures, not routine use."""
        db = self._conn()
        db.execute("VACUUM")
        deadline = time.monotonic() + self._timeout
        # busy while another connection still reads an older snapshot: wait for it (their reads are short)
        while db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
