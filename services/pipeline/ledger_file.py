"""The ledger's SQLite file (services.sqlite_file: one connection per thread, WAL and synchronous=FULL, immediate
transactions); and the two small tables beside the items: PACS pull cursors and the opaque source references of
stored payloads.

services.pipeline.ledger.Ledger builds the items (what happened to each image) on top of this.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from services.pipeline.ledger_schema import ensure_schema
from services.sqlite_file import SqliteFile


def put_cursor(db: sqlite3.Connection, name: str, value: str) -> None:
    """Set cursor `name` inside the caller's transaction."""
    db.execute(
        "INSERT INTO cursors(name, value, updated_at) VALUES (?,?,?)"
        " ON CONFLICT(name) DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at",
        (name, value, time.time()),
    )


class LedgerFile(SqliteFile):
    """The ledger file at `path`; safe to use from several threads and processes at once."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 30.0) -> None:
        # creates the tables, or migrates an older ledger in place
        super().__init__(path, ensure_schema, busy_timeout_s=busy_timeout_s)

    # -- pull cursors (committed only after what they cover is durably recorded)

    def cursor(self, name: str) -> str | None:
        rec = self._conn().execute("SELECT value FROM cursors WHERE name=?", (name,)).fetchone()
        return rec["value"] if rec else None

    def set_cursor(self, name: str, value: str) -> None:
        with self._tx() as db:
            put_cursor(db, name, value)

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
