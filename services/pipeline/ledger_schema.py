"""The ledger's tables, and the in-place migration of ledgers written by older cxr versions.

Version 2 keys an item by (collection, key): the same instance or file indexed into a second collection (a new
model, a test collection) is a second item with its own state, while the spool file and the refs stay shared.
Version 1 (no `user_version`) keyed it by `key` alone, so an instance received into one collection was "already
here" for every other. Version 3 adds an index by origin (which API uploads may be deleted); a version 2 ledger
gains it when first opened. Version 4 adds the `reports` table (similar-cases reports sent back to the PACS,
services.pipeline.report_ledger); an older ledger gains it when first opened. The migration copies every row as
it is; it runs once, in one transaction, when any cxr process first opens the file.
"""

from __future__ import annotations

import sqlite3

VERSION = 4

ITEMS = """
CREATE TABLE IF NOT EXISTS items (
    collection   TEXT NOT NULL,
    key          TEXT NOT NULL,         -- 'sop:<SOPInstanceUID>' or 'file:<32 hex>' (HMAC of the path)
    path         TEXT NOT NULL,         -- where the bytes are (spool file, or the user's file); never leaves here
    origin       TEXT NOT NULL,         -- 'receiver' | 'pull' | 'file' | 'upload'
    state        TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    stage        TEXT,                  -- where it failed: find | decode | encode | upsert | refused | gave-up
    reason       TEXT,
    permanent    INTEGER NOT NULL DEFAULT 0,
    update_mode  INTEGER NOT NULL DEFAULT 0,  -- rewrite payload (and vector) even if the point exists
    extra        TEXT,                  -- JSON: label and manifest fields for this item (local only)
    point_id     TEXT,
    received_at  REAL NOT NULL,
    queued_at    REAL,
    updated_at   REAL NOT NULL,
    indexed_at   REAL,
    PRIMARY KEY (collection, key)
);
CREATE INDEX IF NOT EXISTS items_key ON items(key);
CREATE INDEX IF NOT EXISTS items_state ON items(state, updated_at);
CREATE INDEX IF NOT EXISTS items_indexed ON items(indexed_at);
CREATE INDEX IF NOT EXISTS items_origin ON items(origin, path);
"""

OTHERS = """
CREATE TABLE IF NOT EXISTS cursors (name TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS refs (ref TEXT PRIMARY KEY, path TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS reports (
    collection   TEXT NOT NULL,
    key          TEXT NOT NULL,         -- the film's item key, 'sop:<SOPInstanceUID>'
    study_uid    TEXT,                  -- one report per study unless CXR_REPORT_PER_STUDY=false
    point_id     TEXT,
    destination  TEXT NOT NULL,         -- where it goes (no credentials)
    state        TEXT NOT NULL,         -- pending | sent | failed
    attempts     INTEGER NOT NULL DEFAULT 0,
    reason       TEXT,
    pdf_uid      TEXT,
    sr_uid       TEXT,
    created_at   REAL NOT NULL,
    queued_at    REAL,
    updated_at   REAL NOT NULL,
    sent_at      REAL,
    PRIMARY KEY (collection, key)
);
CREATE INDEX IF NOT EXISTS reports_study ON reports(collection, study_uid);
CREATE INDEX IF NOT EXISTS reports_state ON reports(state, updated_at);
"""

_COLUMNS = (
    "collection, key, path, origin, state, attempts, stage, reason, permanent, update_mode, extra, point_id,"
    " received_at, queued_at, updated_at, indexed_at"
)


def _statements(sql: str) -> list[str]:
    """Split a script into statements (a `;` inside a comment or a string does not end one)."""
    out, current = [], ""
    for line in sql.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    return out


def _items_keyed_by_key_alone(db: sqlite3.Connection) -> bool:
    pk = [r[1] for r in sorted(db.execute("PRAGMA table_info(items)"), key=lambda r: r[5]) if r[5]]
    return pk == ["key"]


def ensure_schema(db: sqlite3.Connection) -> bool:
    """Create the tables, or migrate a version 1 ledger in place; True when a migration ran. `db` is in
    autocommit mode; the migration takes the write lock first, so two processes opening an old ledger at once
    migrate it once."""
    if db.execute("PRAGMA user_version").fetchone()[0] >= VERSION:
        return False
    db.execute("BEGIN IMMEDIATE")
    try:
        migrated = False
        if db.execute("PRAGMA user_version").fetchone()[0] < VERSION:
            exists = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='items'").fetchone()
            if exists and _items_keyed_by_key_alone(db):
                db.execute("ALTER TABLE items RENAME TO items_v1")
                for index in ("items_state", "items_indexed"):
                    db.execute(f"DROP INDEX IF EXISTS {index}")
                migrated = True
            for statement in _statements(ITEMS + OTHERS):
                db.execute(statement)
            if migrated:
                db.execute(f"INSERT INTO items({_COLUMNS}) SELECT {_COLUMNS} FROM items_v1")
                db.execute("DROP TABLE items_v1")
            db.execute(f"PRAGMA user_version={VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return migrated
