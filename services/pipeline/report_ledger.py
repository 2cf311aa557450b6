"""The ledger's record of similar-cases reports sent back to the PACS: one row per reported film.

States: pending (recorded; `queued_at` once its task was published) -> sent | failed. `attempts` counts the tries
of the destination. A pending report whose message was never published (the broker was down) or was lost is sent
again by the sweep (`due`); a failed one is listed by `cxr failures` (as `report:<SOP Instance UID>`) and re-armed
by `cxr retry`. Rows live in the ledger file (table `reports`, services.pipeline.ledger_schema), so a report is
recorded in the same place, with the same durability, as the film it reports on.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass

from services.pipeline.ledger_file import LedgerFile

REPORT_PREFIX = "report:"  # how `cxr failures` names a report, and how `cxr retry` takes it


@dataclass(frozen=True)
class ReportRow:
    collection: str
    key: str  # the film's item key, sop:<UID>
    study_uid: str | None
    point_id: str | None
    destination: str
    state: str
    attempts: int
    reason: str | None
    pdf_uid: str | None
    sr_uid: str | None
    created_at: float
    queued_at: float | None
    updated_at: float
    sent_at: float | None

    @property
    def name(self) -> str:
        """`report:<SOP Instance UID>`: what `cxr failures` shows and `cxr retry` takes."""
        return REPORT_PREFIX + self.key.removeprefix("sop:")


@dataclass(frozen=True)
class Candidate:
    """An indexed film the scope allows a report for."""

    key: str
    study_uid: str | None
    point_id: str | None


def _row(rec: sqlite3.Row) -> ReportRow:
    return ReportRow(**{name: rec[name] for name in ReportRow.__dataclass_fields__})


def report_key(name: str) -> str:
    """The film key of `report:<UID>` (or of a film key given as is)."""
    return "sop:" + name[len(REPORT_PREFIX) :] if name.startswith(REPORT_PREFIX) else name


class ReportLedger(LedgerFile):
    """The `reports` table of the ledger file at `path`."""

    def plan(self, collection: str, candidates: Sequence[Candidate], *, destination: str, per_study: bool) -> list[str]:
        """Record a pending report for each candidate that has none (nor, with `per_study`, a study that has one);
        returns the keys recorded now, in order. One transaction: two writers never both take a study."""
        now, fresh = time.time(), []
        with self._tx() as db:
            for c in candidates:
                if db.execute("SELECT 1 FROM reports WHERE collection=? AND key=?", (collection, c.key)).fetchone():
                    continue
                if per_study and c.study_uid:
                    sql = "SELECT 1 FROM reports WHERE collection=? AND study_uid=? LIMIT 1"
                    if db.execute(sql, (collection, c.study_uid)).fetchone():
                        continue
                db.execute(
                    "INSERT INTO reports(collection, key, study_uid, point_id, destination, state, created_at,"
                    " updated_at) VALUES (?,?,?,?,?,'pending',?,?)",
                    (collection, c.key, c.study_uid, c.point_id, destination, now, now),
                )
                fresh.append(c.key)
        return fresh

    def get(self, collection: str, key: str) -> ReportRow | None:
        rec = self._conn().execute("SELECT * FROM reports WHERE collection=? AND key=?", (collection, key)).fetchone()
        return _row(rec) if rec else None

    def due(self, *, requeue_after_s: float, limit: int = 1000) -> list[ReportRow]:
        """Pending reports never published, or published and untouched for `requeue_after_s` (a lost message)."""
        cutoff = time.time() - requeue_after_s
        recs = self._conn().execute(
            "SELECT * FROM reports WHERE state='pending' AND (queued_at IS NULL OR updated_at < ?)"
            " ORDER BY created_at LIMIT ?",
            (cutoff, limit),
        )
        return [_row(r) for r in recs]

    def mark_queued(self, collection: str, keys: Sequence[str]) -> None:
        now = time.time()
        with self._tx() as db:
            db.executemany(
                "UPDATE reports SET queued_at=?, updated_at=? WHERE collection=? AND key=? AND state='pending'",
                [(now, now, collection, k) for k in keys],
            )

    def claim(self, collection: str, key: str) -> ReportRow | None:
        """Start a try: attempts + 1. None when the report is sent, failed or unknown (a redelivered message)."""
        with self._tx() as db:
            sql = (
                "UPDATE reports SET attempts=attempts+1, updated_at=? WHERE collection=? AND key=? AND state='pending'"
            )
            if not db.execute(sql, (time.time(), collection, key)).rowcount:
                return None
            return _row(db.execute("SELECT * FROM reports WHERE collection=? AND key=?", (collection, key)).fetchone())

    def mark_sent(self, collection: str, key: str, *, pdf_uid: str | None, sr_uid: str | None) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE reports SET state='sent', reason=NULL, pdf_uid=?, sr_uid=?, sent_at=?, updated_at=?"
                " WHERE collection=? AND key=?",
                (pdf_uid, sr_uid, now, now, collection, key),
            )

    def mark_attempt_failed(self, collection: str, key: str, reason: str, *, final: bool) -> None:
        """Keep the reason; `final` ends the report as failed (else it stays pending for the next try)."""
        with self._tx() as db:
            db.execute(
                "UPDATE reports SET state=?, reason=?, updated_at=? WHERE collection=? AND key=?",
                ("failed" if final else "pending", reason[:2000], time.time(), collection, key),
            )

    def failures(self, *, limit: int = 1000) -> list[ReportRow]:
        recs = self._conn().execute(
            "SELECT * FROM reports WHERE state='failed' ORDER BY updated_at DESC LIMIT ?", (limit,)
        )
        return [_row(r) for r in recs]

    def retry(self, keys: Sequence[str] | None = None) -> list[ReportRow]:
        """Re-arm failed reports (all when `keys` is None; film keys or `report:` names): attempts back to 0,
        pending and not yet published. Returns the rows re-armed."""
        wanted = None if keys is None else {report_key(k) for k in keys}
        now = time.time()
        with self._tx() as db:
            rows = [_row(r) for r in db.execute("SELECT * FROM reports WHERE state='failed'")]
            rows = [r for r in rows if wanted is None or r.key in wanted]
            db.executemany(
                "UPDATE reports SET state='pending', attempts=0, reason=NULL, queued_at=NULL, updated_at=?"
                " WHERE collection=? AND key=?",
                [(now, r.collection, r.key) for r in rows],
            )
        return rows

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(("pending", "sent", "failed"), 0)
        for rec in self._conn().execute("SELECT state, COUNT(*) AS n FROM reports GROUP BY state"):
            out[rec["state"]] = rec["n"]
        return out
