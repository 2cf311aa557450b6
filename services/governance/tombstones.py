"""Tombstones: what `cxr forget` erased, kept as salted hashes only, so it is refused (or skipped) when it arrives
again by any way in: C-STORE and pull (services.pacs.intake), `cxr index` and the queue (services.pipeline.stages),
and the API (whose uploads go through the queue).

A patient is kept as its `patient_hash` (the same salted HMAC payloads carry); a study or an instance as an HMAC
of its UID, for the UID as sent and for the one de-identification gives it (services.pacs.deid), so a
de-identified copy is recognised too. The table lives in the ledger's file, which every process already opens.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from services.errors import CxrError
from services.index.payload import patient_hash
from services.sqlite_file import SqliteFile

KINDS = ("patient", "study", "sop")
_DOMAIN = b"cxr tombstone uid\0"


class ForgottenError(CxrError):
    """An image of a patient, study or instance that `cxr forget` erased."""

    default_hint = "It was erased on request (cxr forget); it is not indexed again."


@dataclass(frozen=True)
class Target:
    """What to forget: a patient id, a Study Instance UID or a SOP Instance UID, as the hospital knows it."""

    kind: str  # patient | study | sop
    value: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS or not self.value.strip():
            raise ValueError(f"forget what? kind must be one of {KINDS} with a value, got {self.kind}={self.value!r}")

    @classmethod
    def given(cls, patient_id: str | None, study_uid: str | None, sop_uid: str | None) -> Target:
        """The one target named by a command's or a request's options; ValueError unless exactly one is given."""
        named = [(k, v) for k, v in zip(KINDS, (patient_id, study_uid, sop_uid), strict=True) if v]
        if len(named) != 1:
            raise ValueError("give exactly one of a patient id, a study UID, a SOP instance UID")
        return cls(*named[0])


def uid_hash(uid: str, salt: bytes) -> str:
    return hmac.new(salt, _DOMAIN + uid.strip().encode(), hashlib.sha256).hexdigest()[:32]


def uid_forms(uid: str, salt: bytes) -> list[str]:
    """A UID as sent and as de-identification rewrites it (the payload of a de-identified copy holds the second)."""
    from services.pacs.deid import Deidentifier

    return sorted({uid.strip(), Deidentifier(salt).uid(uid)})


def target_hashes(target: Target, salt: bytes) -> list[tuple[str, str]]:
    """The (kind, hash) tombstones of `target`."""
    if target.kind == "patient":
        return [("patient", str(patient_hash(target.value, salt)))]
    return [(target.kind, uid_hash(u, salt)) for u in uid_forms(target.value, salt)]


def _schema(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TABLE IF NOT EXISTS tombstones (kind TEXT NOT NULL, hash TEXT NOT NULL, created_at REAL NOT NULL,"
        " PRIMARY KEY (kind, hash))"
    )


@lru_cache(maxsize=8)
def tombstones_at(path: Path, salt: bytes) -> Tombstones:
    """One Tombstones per ledger file and salt in a process (its connections are per thread)."""
    return Tombstones(path, salt)


class Tombstones(SqliteFile):
    """The tombstones in the ledger file at `path`, checked under `salt`."""

    def __init__(self, path: Path, salt: bytes) -> None:
        super().__init__(path, _schema)
        self.salt = salt

    def add(self, pairs: Iterable[tuple[str, str]]) -> None:
        now = time.time()
        with self._tx() as db:
            db.executemany(
                "INSERT OR IGNORE INTO tombstones(kind, hash, created_at) VALUES (?,?,?)",
                [(k, h, now) for k, h in pairs],
            )

    def count(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM tombstones").fetchone()[0])

    def match(
        self, *, patient: str | None = None, study_uid: str | None = None, sop_uid: str | None = None
    ) -> str | None:
        """The kind of the first tombstone these identify ('patient', 'study', 'sop'), or None. `patient` is the
        patient hash (a payload's `patient_hash`); the UIDs are as they are stored."""
        wanted = [("patient", patient)] if patient else []
        wanted += [(k, uid_hash(u, self.salt)) for k, u in (("study", study_uid), ("sop", sop_uid)) if u]
        if not wanted:
            return None
        where = " OR ".join("(kind=? AND hash=?)" for _ in wanted)
        args = [x for pair in wanted for x in pair]
        rec = self._conn().execute(f"SELECT kind FROM tombstones WHERE {where} LIMIT 1", args).fetchone()
        return rec["kind"] if rec else None

    def match_payload(self, payload: Mapping[str, Any]) -> str | None:
        return self.match(
            patient=payload.get("patient_hash"), study_uid=payload.get("study_uid"), sop_uid=payload.get("sop_uid")
        )

    def check_payload(self, payload: Mapping[str, Any], what: object) -> None:
        """ForgottenError when `payload` belongs to something forgotten."""
        kind = self.match_payload(payload)
        if kind is not None:
            raise ForgottenError(f"{what}: this {kind} was erased (cxr forget); it is not indexed again")
