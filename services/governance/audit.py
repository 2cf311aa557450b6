"""The audit trail: an append-only, hash-chained record of every security-relevant event, in DATA_DIR/audit.sqlite3.

What is recorded (the callers): API searches, point and thumbnail views, renders, explanations and index requests
(services.api), C-STORE associations (services.pacs.receiver), pulls, CLI index, search and eval runs, erasures
(`cxr forget`) and token changes (`cxr token`). Each record holds the UTC time, the actor (a token's name, `ae:` and
the calling AE title, `os:` and the OS user for the CLI), the action, the outcome, the client address, and the
objects: content hashes (a query's SHA-256), point ids, counts, the salted patient hash. Never a patient's name or
id, a UID or a file path: `record` refuses object values that look like one (`_plain`).

Tamper-evident: each record's `hash` is the SHA-256 of the previous record's hash and this record's fields, so an
edited or deleted record breaks the chain (`verify`). Removing the newest records leaves a shorter valid chain:
`cxr audit verify` prints the head (count and last hash) to compare with a copy kept elsewhere.

Durability: the record is committed (WAL, synchronous=FULL, like the ledger) before the API's answer is sent, so a
crash never loses the record of a search whose results left the server. Writers in several processes append to
one chain: the write lock is taken before the previous hash is read.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import re
import sqlite3
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.sqlite_file import SqliteFile

GENESIS = "0" * 64
# An audit write that cannot take the write lock within this is a failure: the API answers 503 rather than wait.
BUSY_TIMEOUT_S = 5.0
SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq      INTEGER PRIMARY KEY,
    ts       TEXT NOT NULL,     -- UTC, ISO 8601 with milliseconds
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    outcome  TEXT NOT NULL,     -- 'ok', 'refused', 'failed', or a status such as '404'
    client   TEXT,              -- an IP address, 'ae:TITLE@ADDRESS', or 'cli'
    objects  TEXT NOT NULL,     -- JSON: content hashes, point ids, counts, patient hashes; never PHI or paths
    prev     TEXT NOT NULL,
    hash     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_ts ON records(ts);
"""
_UNSAFE = re.compile(r"[/\\]|\^|(?:\d+\.){3,}\d+")  # a path, a DICOM person name, a UID


def _schema(db: sqlite3.Connection) -> None:
    db.executescript(SCHEMA)


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    ts: str
    actor: str
    action: str
    outcome: str
    client: str | None
    objects: dict[str, Any]
    prev: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def chain_hash(
    prev: str, seq: int, ts: str, actor: str, action: str, outcome: str, client: str | None, objects: str
) -> str:
    body = json.dumps([seq, ts, actor, action, outcome, client, objects], separators=(",", ":"))
    return hashlib.sha256(f"{prev}\n{body}".encode()).hexdigest()


def cli_actor() -> str:
    """The actor of a CLI run: the OS user."""
    try:
        return "os:" + getpass.getuser()
    except (KeyError, OSError):
        return "os:?"


def _plain(objects: Mapping[str, Any]) -> str:
    """The objects as canonical JSON, refusing any string that looks like a path, a person name or a UID."""

    def check(value: Any) -> None:
        if isinstance(value, str) and _UNSAFE.search(value):
            raise ValueError(f"audit objects may not hold paths, names or UIDs: {value[:40]!r}")
        if isinstance(value, list | tuple):
            for v in value:
                check(v)
        elif isinstance(value, Mapping):
            for v in value.values():
                check(v)

    check(dict(objects))
    return json.dumps(dict(objects), sort_keys=True, separators=(",", ":"))


class AuditLog(SqliteFile):
    """The audit trail at `path`. `enabled=False` records nothing (the benchmark's baseline only)."""

    def __init__(self, path: Path, *, enabled: bool = True, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        super().__init__(path, _schema, busy_timeout_s=busy_timeout_s)
        self.enabled = enabled

    def record(
        self,
        actor: str,
        action: str,
        outcome: str = "ok",
        *,
        client: str | None = None,
        objects: Mapping[str, Any] | None = None,
    ) -> int | None:
        """Append one record, durable when this returns; its sequence number (None when disabled)."""
        if not self.enabled:
            return None
        blob = _plain(objects or {})
        now = _utc(datetime.now(UTC))
        with self._tx() as db:
            last = db.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (last["seq"] + 1, last["hash"]) if last else (1, GENESIS)
            digest = chain_hash(prev, seq, now, actor, action, outcome, client, blob)
            db.execute(
                "INSERT INTO records(seq, ts, actor, action, outcome, client, objects, prev, hash)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (seq, now, actor, action, outcome, client, blob, prev, digest),
            )
        return seq

    def records(
        self,
        *,
        since: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        limit: int | None = None,
    ) -> list[AuditRecord]:
        """Records oldest first, filtered by time (ISO, inclusive), actor and action; the newest `limit` of them."""
        where, args = [], []
        for column, value, op in (("ts", since, ">="), ("actor", actor, "="), ("action", action, "=")):
            if value is not None:
                where.append(f"{column} {op} ?")
                args.append(value)
        sql = "SELECT * FROM records" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY seq DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        rows = [_record(r) for r in self._conn().execute(sql, args)]
        return rows[::-1]

    def _all(self) -> Iterator[sqlite3.Row]:
        yield from self._conn().execute("SELECT * FROM records ORDER BY seq")

    def verify(self) -> Verdict:
        """Walk the chain: every record's `prev` is the hash before it, its own hash matches its fields, and the
        sequence has no gap."""
        prev, expected, count = GENESIS, 1, 0
        for r in self._all():
            fields = (r["seq"], r["ts"], r["actor"], r["action"], r["outcome"], r["client"], r["objects"])
            if r["seq"] != expected:
                return Verdict(False, count, prev, f"record {expected} is missing (next is {r['seq']})")
            if r["prev"] != prev:
                return Verdict(False, count, prev, f"record {r['seq']} does not follow record {r['seq'] - 1}")
            if chain_hash(prev, *fields) != r["hash"]:
                return Verdict(False, count, prev, f"record {r['seq']} was changed after it was written")
            prev, expected, count = r["hash"], expected + 1, count + 1
        return Verdict(True, count, prev, "")


@dataclass(frozen=True)
class Verdict:
    ok: bool
    count: int  # records checked good
    head: str  # the last good record's hash
    problem: str


def _record(r: sqlite3.Row) -> AuditRecord:
    return AuditRecord(
        r["seq"],
        r["ts"],
        r["actor"],
        r["action"],
        r["outcome"],
        r["client"],
        json.loads(r["objects"]),
        r["prev"],
        r["hash"],
    )


def audit_log(settings: Any) -> AuditLog:
    """The data directory's audit trail (Settings.audit_path), on or off as CXR_AUDIT_ENABLED says."""
    return AuditLog(settings.audit_path, enabled=settings.audit_enabled)


def record_cli(settings: Any, action: str, outcome: str = "ok", **objects: Any) -> None:
    """Record a CLI run (`cli.index`, `cli.search`, `cli.eval`) by the OS user."""
    audit_log(settings).record(cli_actor(), action, outcome, client="cli", objects=objects)


def _utc(when: datetime) -> str:
    """A UTC time as the records hold it: ISO 8601, milliseconds, `Z` (so text order is time order)."""
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def since_from(text: str) -> str:
    """`--since`: an ISO date or time, or an age such as 30m, 12h, 7d; the ISO UTC time it means."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if m:
        seconds = float(m[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]
        return _utc(datetime.fromtimestamp(time.time() - seconds, UTC))
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since takes an ISO date or time, or an age like 12h or 7d, not {text!r}") from None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return _utc(when.astimezone(UTC))
