"""One ledger row: the `Item` it reads as, and recording an arrival (a new row, or an old one re-armed)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Item:
    """One ledger row."""

    key: str
    path: str
    origin: str
    collection: str
    state: str
    attempts: int
    stage: str | None
    reason: str | None
    permanent: bool
    update: bool
    extra: dict[str, Any]
    point_id: str | None
    received_at: float
    queued_at: float | None
    updated_at: float
    indexed_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _row(rec: sqlite3.Row) -> Item:
    return Item(
        key=rec["key"],
        path=rec["path"],
        origin=rec["origin"],
        collection=rec["collection"],
        state=rec["state"],
        attempts=rec["attempts"],
        stage=rec["stage"],
        reason=rec["reason"],
        permanent=bool(rec["permanent"]),
        update=bool(rec["update_mode"]),
        extra=json.loads(rec["extra"]) if rec["extra"] else {},
        point_id=rec["point_id"],
        received_at=rec["received_at"],
        queued_at=rec["queued_at"],
        updated_at=rec["updated_at"],
        indexed_at=rec["indexed_at"],
    )


def _record(
    db: sqlite3.Connection,
    now: float,
    key: str,
    path: str | Path,
    origin: str,
    collection: str,
    extra: dict[str, Any] | None,
    update: bool,
) -> bool:
    blob = json.dumps(extra or {}, sort_keys=True)
    rec = db.execute("SELECT state, extra FROM items WHERE collection=? AND key=?", (collection, key)).fetchone()
    if rec is None:
        db.execute(
            "INSERT INTO items(key, path, origin, collection, state, update_mode, extra, received_at,"
            " updated_at) VALUES (?,?,?,?,'received',?,?,?,?)",
            (key, str(path), origin, collection, int(update), blob, now, now),
        )
        return True
    if update or rec["state"] == "failed" or (rec["state"] == "indexed" and _changed(rec["extra"], extra)):
        db.execute(
            "UPDATE items SET path=?, origin=?, state='received', attempts=0, stage=NULL, reason=NULL,"
            " permanent=0, update_mode=?, extra=?, queued_at=NULL, updated_at=? WHERE collection=? AND key=?",
            (str(path), origin, int(update), blob, now, collection, key),
        )
        return True
    return False


def _changed(stored: str | None, extra: dict[str, Any] | None) -> bool:
    """True when a file submitted again is not the one indexed: its `stat` (size, mtime) in `extra` differs from
    the one recorded (a file rewritten in place is indexed again, and its new point replaces the old one)."""
    now = (extra or {}).get("stat")
    if now is None:
        return False
    try:
        return json.loads(stored or "{}").get("stat") != now
    except ValueError:
        return True
