"""Pull from a PACS: find new chest radiographs there, fetch them as stored, and take them in like the receiver.

Two modes, one contract:
- `dicomweb` (any DICOMweb PACS): QIDO-RS finds studies in StudyDate windows, then series (filtered by modality and
  the acceptance rule before anything is fetched), then instances; WADO-RS fetches each with `transfer-syntax=*`,
  so the server sends what it stores instead of transcoding. See services/pacs/dicomweb.py.
- `orthanc-changes` (Orthanc): the `/changes` feed from the stored sequence number, in order. See
  services/pacs/orthanc_changes.py.

Every fetched instance goes through `Intake.accept` (rule, optional de-identification, spool fsync + rename,
ledger), so a re-pull never duplicates: an instance the ledger holds is not fetched again. The cursor is committed
only after what it covers is durable. Transient errors (timeouts, 5xx) are retried with backoff; an instance that
still fails is a per-item failure and the rest goes on; a permanently bad one is recorded in the ledger as failed
(`cxr failures`). The dispatcher is called after each batch, never in the fetch path.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Literal

from pydicom.dataset import Dataset

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
        outcome = self.intake.accept(data, origin="pull", expected_uid=expected_uid, header=header)
        if outcome.ok:
            self.report.stored += int(outcome.new)
            self.report.already += int(not outcome.new)
            self.pending += int(outcome.new)
        elif outcome.status in (0xA900, 0xA901):
            self.report.refused += 1
            log.info("pulled %s refused 0x%04X: %s", outcome.sop_uid or ref, outcome.status, outcome.reason)
        else:
            self.fail(
                ref, outcome.reason, permanent=outcome.permanent, uid=outcome.sop_uid or expected_uid, where=where
            )
        return outcome

    def fail(self, ref: str, reason: str, *, permanent: bool, uid: str | None, where: str) -> None:
        self.report.failed.append(PullFailure(uid or ref, reason, permanent))
        log.warning("pull of %s failed (%s): %s", uid or ref, "permanent" if permanent else "transient", reason)
        if permanent:
            self.intake.record_failure(uid=uid, ref=ref, where=where, stage="pull", reason=reason)

    def flush(self) -> None:
        if self.dispatch is None or not self.pending:
            return
        try:
            self.report.dispatched += int(self.dispatch() or 0)
        except Exception as exc:  # noqa: BLE001 - the broker is not needed to pull; the sweep sends it later
            log.warning("dispatch failed (%s); pulled items stay in the ledger", type(exc).__name__)
        self.pending = 0


def pull(intake: Intake, opts: PullOptions, *, dispatch: Dispatch | None = None) -> PullReport:
    """Run one pull in `opts.mode` and return its report."""
    import time

    t0 = time.perf_counter()
    if opts.mode == "dicomweb":
        from services.pacs.dicomweb import pull_dicomweb

        report = pull_dicomweb(intake, opts, dispatch=dispatch)
    elif opts.mode == "orthanc-changes":
        from services.pacs.orthanc_changes import pull_orthanc_changes

        report = pull_orthanc_changes(intake, opts, dispatch=dispatch)
    else:
        from services.errors import ConfigError

        raise ConfigError(f"unknown pull mode {opts.mode!r}", "Use --mode dicomweb or --mode orthanc-changes.")
    report.seconds = round(time.perf_counter() - t0, 3)
    return report
