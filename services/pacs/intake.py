"""Intake: one DICOM instance in (bytes from a C-STORE or a PACS pull), durable in the spool and the ledger out.

Both the receiver and the puller call `Intake.accept`, so they share one acceptance rule, one de-identification
step and one durability order: parse the header, refuse what is not a chest radiograph, write the spool file
(fsync + rename), record the ledger row (SQLite, synchronous=FULL), and only then report success. Any failure
returns a failure status; nothing is ever reported stored that is not on disk. Logs carry UIDs and statuses only.

A UID the spool already holds is compared with what is there (services/pacs/uid_conflict.py): the same image of
the same patient is a resend and replaces the file as before; anything else is a conflict. The first instance is
never overwritten: the second is refused with 0xC003 (or, with `quarantine_conflicts`, kept in spool/.conflicts
and answered success), recorded as a failed item `conflict:<UID>:<tag>` at stage 'uid-conflict' carrying both
patients' hashes (`cxr failures` lists it; `cxr retry` leaves it to a person), and logged without PHI.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from services.governance.tombstones import Tombstones
from services.imaging.deflate import inflates_past
from services.index.payload import patient_hash
from services.pacs import acceptance as st
from services.pacs.deid import BurnedInAnnotationError, Deidentifier, deidentify_bytes
from services.pacs.spool import Spool, SpoolFullError, valid_uid
from services.pacs.uid_conflict import Image, Verdict, compare
from services.pipeline.ledger import Ledger, sop_key

log = logging.getLogger("cxr.pacs")
MAX_INSTANCE_BYTES = 128 * 2**20  # CXR_DICOM_MAX_INSTANCE_MB's default: also the most a deflated data set inflates to


@dataclass(frozen=True)
class Outcome:
    """What happened to one instance. `reason` never holds PHI (UIDs, rule names, error types only)."""

    status: int
    sop_uid: str | None = None
    reason: str = ""
    new: bool = False  # a ledger row was created (False for a resend of a pending or indexed instance)
    path: Path | None = None
    conflict: bool = False  # its UID was taken by another image: refused or quarantined, and recorded as failed

    @property
    def ok(self) -> bool:
        return self.status == st.SUCCESS

    @property
    def permanent(self) -> bool:
        return self.status in st.PERMANENT or self.status == st.CANNOT_DEIDENTIFY


def read_header(data: bytes, *, max_bytes: int = MAX_INSTANCE_BYTES) -> Dataset:
    """The data set without its pixel data (fast); raises on bytes that are not DICOM, and on a deflated data set
    that would inflate past `max_bytes`, the instance cap (pydicom inflates it whole to read a header)."""
    if inflates_past(data, max_bytes):
        raise ValueError(f"the deflated data set inflates past the {max_bytes:,}-byte instance cap")
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=False)


class Intake:
    """Takes instances into `spool` and `ledger` for `collection`; de-identifies them first when `deidentifier`."""

    def __init__(
        self,
        spool: Spool,
        ledger: Ledger,
        *,
        collection: str,
        deidentifier: Deidentifier | None = None,
        salt: bytes | None = None,
        quarantine_conflicts: bool = False,
        tombstones: Tombstones | None = None,
        skip_forgotten: bool = False,
        max_instance_bytes: int = MAX_INSTANCE_BYTES,
    ) -> None:
        """`salt` (the patient salt) puts both patients' hashes in a UID conflict's record; without it they are
        left out. `quarantine_conflicts` keeps a conflicting instance aside instead of refusing it. An instance
        `tombstones` says was forgotten is refused (FORGOTTEN), or answered success and dropped with
        `skip_forgotten`."""
        self.spool, self.ledger, self.collection, self.deid = spool, ledger, collection, deidentifier
        self.salt, self.quarantine_conflicts = salt, quarantine_conflicts
        self.tombstones, self.skip_forgotten = tombstones, skip_forgotten
        self.max_instance_bytes = max_instance_bytes
        self.spool.ensure()

    def stored_uid(self, uid: str) -> str:
        """The UID an instance is kept under (its hashed replacement when de-identification is on)."""
        return self.deid.uid(uid) if self.deid is not None else uid.strip()

    def _forgotten(self, ds: Dataset, uid: str) -> Outcome | None:
        """The answer to an instance of a forgotten patient, study or instance (None for any other)."""
        if self.tombstones is None:
            return None
        kind = self.tombstones.match(
            patient=patient_hash(str(ds.get("PatientID", "") or ""), self.tombstones.salt),
            study_uid=str(ds.get("StudyInstanceUID", "") or "") or None,
            sop_uid=uid,
        )
        if kind is None:
            return None
        log.info("instance of a forgotten %s %s (cxr forget)", kind, "skipped" if self.skip_forgotten else "refused")
        if self.skip_forgotten:
            return Outcome(st.SUCCESS, uid, f"this {kind} was erased (cxr forget): not kept")
        return Outcome(st.FORGOTTEN, uid, f"this {kind} was erased (cxr forget)")

    def known(self, uid: str) -> bool:
        """True when the ledger already holds this instance for this intake's collection (so a re-pull need not
        fetch it again; one received into another collection is fetched, or taken from the spool, for this one).
        A pull's own earlier failure ('pull' stage) does not count: the next pull fetches it again."""
        item = self.ledger.get(sop_key(self.stored_uid(uid)), self.collection)
        return item is not None and not (item.state == "failed" and item.stage == "pull")

    def accept(
        self,
        data: bytes,
        *,
        origin: str,
        expected_uid: str | None = None,
        sent_as: str | None = None,
        header: Dataset | None = None,
        source: str = "",
        calling_aet: str | None = None,
    ) -> Outcome:
        """Check, spool and record one Part 10 instance; the Outcome's status is the C-STORE answer. `source`
        (PHI-free: an AE title and address, a PACS locator) goes into a conflict's record; `calling_aet` (the
        receiver's sender) into the ledger row, for the report scope (services.reports.trigger)."""
        try:
            ds = header if header is not None else read_header(data, max_bytes=self.max_instance_bytes)
            uid = str(ds.get("SOPInstanceUID", "") or "").strip()
        except Exception as exc:  # noqa: BLE001 - any parse failure is a per-instance answer
            return Outcome(st.CANNOT_UNDERSTAND, expected_uid, f"cannot parse the data set ({type(exc).__name__})")
        if not valid_uid(uid):
            return Outcome(st.BAD_SOP_INSTANCE_UID, expected_uid, "missing or malformed SOPInstanceUID")
        if expected_uid and uid != expected_uid.strip():
            return Outcome(st.SOP_CLASS_MISMATCH, expected_uid, f"data set SOPInstanceUID {uid} differs from request")
        refused = st.refusal(ds, sent_as=sent_as)
        if refused is not None:
            return Outcome(refused[0], uid, refused[1])
        forgotten = self._forgotten(ds, uid)
        if forgotten is not None:
            return forgotten
        stored_uid = uid
        if self.deid is not None:
            try:
                data, stored_uid = deidentify_bytes(self.deid, data)
            except BurnedInAnnotationError as exc:
                return Outcome(st.CANNOT_DEIDENTIFY, uid, str(exc))
            except Exception as exc:  # noqa: BLE001
                return Outcome(st.CANNOT_UNDERSTAND, uid, f"cannot de-identify ({type(exc).__name__})")
        try:
            path = self.spool.create(stored_uid, data)
            if path is None:  # the UID is taken: the same image again, or another one
                clash = self._clash(stored_uid, data, uid=uid, origin=origin, source=source)
                if clash is not None:
                    return clash
                path = self.spool.write(stored_uid, data)  # a resend replaces the file, as it always did
        except SpoolFullError as exc:
            return Outcome(st.OUT_OF_RESOURCES, uid, exc.message)
        try:
            extra = {"aet": calling_aet.strip()} if calling_aet else None
            new = self.ledger.record(sop_key(stored_uid), path, origin=origin, collection=self.collection, extra=extra)
        except (sqlite3.Error, OSError) as exc:
            # The file is durable; the spool reconciliation records it at the next start, and the sender retries.
            return Outcome(st.LEDGER_UNAVAILABLE, uid, f"ledger unavailable ({type(exc).__name__})")
        return Outcome(st.SUCCESS, stored_uid, "", new, path)

    def record_failure(self, *, uid: str | None, ref: str, where: str, stage: str, reason: str) -> None:
        """Keep a permanent per-instance pull failure in the ledger (so `cxr failures` lists it and the cursor may
        move past it). `where` is a PHI-free source locator; an instance already recorded is left as it is."""
        key = sop_key(self.stored_uid(uid)) if uid and valid_uid(uid) else "pull:" + ref
        existing = self.ledger.get(key, self.collection)
        if existing is not None and existing.state != "failed":
            return
        self.ledger.record(key, where, origin="pull", collection=self.collection)
        self.ledger.mark_failed(key, stage, reason, permanent=True, collection=self.collection)

    def _clash(self, stored_uid: str, data: bytes, *, uid: str, origin: str, source: str) -> Outcome | None:
        """None when `data` is a resend of the instance the spool holds under `stored_uid`; else the conflict's
        Outcome, once it is recorded (and quarantined)."""
        first_path = self.spool.path_for(stored_uid)
        try:
            if not stat.S_ISREG(os.lstat(first_path).st_mode):
                return None  # not an instance (only regular files are ever read): replaced as before
            first_bytes = first_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            second = Image.parse(data)
        except Exception as exc:  # noqa: BLE001
            return Outcome(st.CANNOT_UNDERSTAND, uid, f"cannot parse the data set ({type(exc).__name__})")
        try:
            first: Image | None = Image.parse(first_bytes)
        except Exception as exc:  # noqa: BLE001 - cannot prove it is the same image: keep it, never overwrite
            first, verdict = None, Verdict(False, f"a first copy that cannot be read ({type(exc).__name__})")
        else:
            verdict = compare(first, second)
        if verdict.same:
            return None
        return self._record_conflict(stored_uid, uid, first, second, verdict, data, origin=origin, source=source)

    def _record_conflict(
        self,
        stored_uid: str,
        uid: str,
        first: Image | None,
        second: Image,
        verdict: Verdict,
        data: bytes,
        *,
        origin: str,
        source: str,
    ) -> Outcome:
        first_patient = first.patient_hash(self.salt) if first is not None else None
        first_pixels = first.pixel_sha256 if first is not None else "?"
        patient = second.patient_hash(self.salt)
        tag = hashlib.sha256(f"{second.pixel_sha256}|{patient or ''}".encode()).hexdigest()[:16]
        key = f"conflict:{stored_uid}:{tag}"
        sender = f"{origin} {source}".strip()
        where = f"{sender} (not kept)"
        if self.quarantine_conflicts:
            try:
                where = str(self.spool.quarantine(stored_uid, tag, data))
            except SpoolFullError as exc:
                return Outcome(st.OUT_OF_RESOURCES, uid, exc.message)
        reason = (
            f"SOP Instance UID {stored_uid} is taken by an instance of {verdict.reason}: kept the first (patient"
            f" {first_patient or '?'}, pixel data {first_pixels[:16]}), "
            f"{'quarantined' if self.quarantine_conflicts else 'refused'} the one from {sender} (patient"
            f" {patient or '?'}, pixel data {second.pixel_sha256[:16]})"
        )
        extra = {
            "sop_uid": stored_uid,
            "first_patient_hash": first_patient,
            "patient_hash": patient,
            "first_pixel_sha256": first_pixels,
            "pixel_sha256": second.pixel_sha256,
        }
        try:
            self.ledger.record_failed(
                key, where, origin=origin, collection=self.collection, stage="uid-conflict", reason=reason, extra=extra
            )
        except (sqlite3.Error, OSError) as exc:
            return Outcome(st.LEDGER_UNAVAILABLE, uid, f"ledger unavailable ({type(exc).__name__})")
        log.warning(
            "UID conflict: %s from %s holds %s; the first instance is kept, this one %s (ledger item %s)",
            stored_uid,
            sender,
            verdict.reason,
            "quarantined" if self.quarantine_conflicts else f"refused 0x{st.UID_CONFLICT:04X}",
            key,
        )
        if self.quarantine_conflicts:
            return Outcome(st.SUCCESS, uid, "", False, Path(where), conflict=True)
        return Outcome(st.UID_CONFLICT, uid, f"SOP Instance UID taken by {verdict.reason}", conflict=True)


def reconcile_spool(spool: Spool, ledger: Ledger, *, collection: str) -> int:
    """After a restart the spool is the truth: record every complete spool file the ledger does not know yet
    (a crash between the rename and the ledger commit). Regular files only. Returns how many were added."""
    spool.sweep_incoming()
    added = 0
    for path in spool.instances():
        uid = path.name[: -len(".dcm")]
        if valid_uid(uid) and ledger.get(sop_key(uid), collection) is None:
            added += ledger.record(sop_key(uid), path, origin="spool", collection=collection)
    if added:
        log.info("spool reconciliation: %d instance(s) recorded", added)
    return added
