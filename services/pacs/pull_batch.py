"""What every pull mode shares: the options of one pull, its report, and the Batch that takes fetched instances in.

services/pacs/dicomweb.py and services/pacs/orthanc_changes.py fetch; services/pacs/pull.py picks the mode.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Literal

from pydicom.dataset import Dataset

from services.pacs.acceptance import NOT_A_CHEST_RADIOGRAPH, SOP_CLASS_MISMATCH
from services.pacs.http import PacsAuth
from services.pacs.intake import Intake, Outcome
from services.pacs.trigger import Dispatch

log = logging.getLogger("cxr.pacs")

Mode = Literal["dicomweb", "orthanc-changes"]


@dataclass(frozen=True)
class PullOptions:
    """One pull. `url` is the DICOMweb root (e.g. http://pacs/dicom-web) or Orthanc's REST root."""

    url: str
    mode: Mode = "dicomweb"
    auth: PacsAuth = field(default_factory=PacsAuth)
    since: date | None = None
    modalities: tuple[str, ...] = ("CR", "DX")
    page_size: int = 200
    timeout_s: float = 30.0
    retries: int = 4
    backoff_s: float = 0.5
    overlap_days: int = 1
    limit: int | None = None  # stop after this many new instances (a trial run)


@dataclass(frozen=True)
class PullFailure:
    """One instance that did not land. `ref` is a UID or a PACS resource id, never PHI."""

    ref: str
    reason: str
    permanent: bool


@dataclass
class PullReport:
    """What a pull did: `listed` instances seen at the PACS, `stored` new ones, `already` skipped without a fetch."""

    mode: str
    listed: int = 0
    fetched: int = 0
    stored: int = 0
    already: int = 0
    refused: int = 0
    failed: list[PullFailure] = field(default_factory=list)
    cursor: str | None = None
    complete: bool = True
    dispatched: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class Batch:
    """Stores fetched instances through the intake and keeps the report; `flush()` dispatches what landed."""

    def __init__(self, intake: Intake, report: PullReport, dispatch: Dispatch | None, opts: PullOptions) -> None:
        self.intake, self.report, self.dispatch, self.opts = intake, report, dispatch, opts
        self.pending = 0

    @property
    def full(self) -> bool:
        return self.opts.limit is not None and self.report.stored >= self.opts.limit

    def take(
        self, data: bytes, *, ref: str, where: str, expected_uid: str | None = None, header: Dataset | None = None
    ) -> Outcome:
        """Store one fetched instance. Refusals by the rule are counted, permanent errors recorded as failed,
        transient ones (spool full, ledger busy) reported for the caller to stop on."""
        self.report.fetched += 1
        outcome = self.intake.accept(data, origin="pull", expected_uid=expected_uid, header=header, source=where)
        if outcome.conflict:  # refused or quarantined: the intake recorded it as failed, with both patients' hashes
            self.fail(
                ref,
                outcome.reason or "SOP Instance UID conflict (quarantined)",
                permanent=True,
                uid=outcome.sop_uid or expected_uid,
                where=where,
                record=False,
            )
        elif outcome.ok:
            self.report.stored += int(outcome.new)
            self.report.already += int(not outcome.new)
            self.pending += int(outcome.new)
        elif outcome.status in (SOP_CLASS_MISMATCH, NOT_A_CHEST_RADIOGRAPH):
            self.report.refused += 1
            log.info("pulled %s refused 0x%04X: %s", outcome.sop_uid or ref, outcome.status, outcome.reason)
        else:
            self.fail(
                ref, outcome.reason, permanent=outcome.permanent, uid=outcome.sop_uid or expected_uid, where=where
            )
        return outcome

    def fail(self, ref: str, reason: str, *, permanent: bool, uid: str | None, where: str, record: bool = True) -> None:
        self.report.failed.append(PullFailure(uid or ref, reason, permanent))
        log.warning("pull of %s failed (%s): %s", uid or ref, "permanent" if permanent else "transient", reason)
        if permanent and record:
            self.intake.record_failure(uid=uid, ref=ref, where=where, stage="pull", reason=reason)

    def flush(self) -> None:
        if self.dispatch is None or not self.pending:
            return
        try:
            self.report.dispatched += int(self.dispatch() or 0)
        except Exception as exc:  # noqa: BLE001 - the broker is not needed to pull; the sweep sends it later
            log.warning("dispatch failed (%s); pulled items stay in the ledger", type(exc).__name__)
        self.pending = 0
