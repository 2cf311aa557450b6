"""When a report is due: the scope rule, the ledger record, and handing it to the queue.

Once the index writer (or, with a Qdrant server, an embed worker) has made films searchable, `plan_reports` picks
those that get a report and records each as pending in the ledger; `dispatch_due_reports` then publishes every
pending report not yet on its way (also the sweep's job, so a report planned while the broker was down is sent
once it is back). The scope, from the settings:

- a destination is configured (`CXR_REPORT_DESTINATION`);
- the film came in through the receiver or a pull (never a file indexed from disk or an API upload), and, when
  `CXR_REPORT_FROM` lists callers, from one of those calling AE titles (or `pull`);
- it is CR or DX (`CXR_REPORT_MODALITIES`) and a chest (BodyPartExamined CHEST or THORAX), where it says;
- at most one report per study, for its first suitable film (`CXR_REPORT_PER_STUDY`), and one per film always;
- the spool is not de-identified (`CXR_SPOOL_DEIDENTIFY`): a de-identified film has lost the UIDs the PACS knows
  its study by, so its report could not be filed there.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.config import Settings
from services.pacs.acceptance import CHEST_BODY_PARTS
from services.pipeline.ledger import Item, Ledger
from services.pipeline.report_ledger import Candidate, ReportLedger
from services.reports.deliver import destination_of

log = logging.getLogger("cxr.reports")

REPORTED_ORIGINS = ("receiver", "pull", "spool")  # 'spool': received, then recorded by the spool reconciliation
PublishReport = Callable[[str, str], None]  # (collection, film key): hand one report to the workers, or raise


@dataclass(frozen=True)
class Scope:
    """Which films get a report (see the module docstring)."""

    callers: frozenset[str]  # calling AE titles and/or PULL; empty: every received or pulled film
    modalities: frozenset[str]
    per_study: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> Scope:
        def words(text: str) -> frozenset[str]:
            return frozenset(w.strip().upper() for w in text.split(",") if w.strip())

        return cls(words(settings.report_from), words(settings.report_modalities), settings.report_per_study)

    def admits_origin(self, item: Item) -> bool:
        if item.origin not in REPORTED_ORIGINS or not item.key.startswith("sop:"):
            return False
        if not self.callers:
            return True
        if item.origin == "pull":
            return "PULL" in self.callers
        return str(item.extra.get("aet") or "").strip().upper() in self.callers

    def header_refusal(self, modality: str, body_part: str) -> str | None:
        if modality and self.modalities and modality not in self.modalities:
            return f"modality {modality}"
        if body_part and body_part not in CHEST_BODY_PARTS:
            return f"BodyPartExamined {body_part[:16]}"
        return None


def _header(path: str) -> tuple[str, str, str | None]:
    """(Modality, BodyPartExamined, StudyInstanceUID) of a spooled film, normalised like the acceptance rule."""
    import pydicom

    ds = pydicom.dcmread(
        Path(path), stop_before_pixels=True, specific_tags=["Modality", "BodyPartExamined", "StudyInstanceUID"]
    )

    def norm(tag: str) -> str:
        return str(ds.get(tag, "") or "").strip().upper().replace(" ", "")

    return norm("Modality"), norm("BodyPartExamined"), str(ds.get("StudyInstanceUID", "") or "").strip() or None


def plan_reports(
    settings: Settings, ledger: Ledger, reports: ReportLedger, collection: str, keys: Sequence[str]
) -> list[str]:
    """Record a pending report for each indexed film of `keys` the scope admits; the keys recorded now."""
    dest = destination_of(settings)
    if dest is None or not keys:
        return []
    if settings.spool_deidentify:
        # the spool holds hashed UIDs and a pseudonym: a report built from it would name a study the PACS does not
        # know, and the originals are not kept anywhere to address it back
        log.warning("no automatic report for %d film(s): CXR_SPOOL_DEIDENTIFY is on (see the README, PACS)", len(keys))
        return []
    scope = Scope.from_settings(settings)
    candidates = []
    for item in ledger.items(list(keys), collection):
        if item.state != "indexed" or not scope.admits_origin(item):
            continue
        try:
            modality, body_part, study = _header(item.path)
        except Exception as exc:  # noqa: BLE001 - a spool file gone since (forgotten): no report
            log.info("no report for %s: its file cannot be read (%s)", item.key, type(exc).__name__)
            continue
        why = scope.header_refusal(modality, body_part)
        if why:
            log.debug("no report for %s: %s", item.key, why)
            continue
        candidates.append(Candidate(item.key, study, item.point_id))
    if not candidates:
        return []
    fresh = reports.plan(collection, candidates, destination=dest.describe(), per_study=scope.per_study)
    if fresh:
        log.info("%d report(s) due for %s", len(fresh), dest.describe())
    return fresh


def dispatch_due_reports(settings: Settings, reports: ReportLedger, publish: PublishReport) -> int:
    """Publish every pending report not on its way (never published, or its message lost); how many were sent.
    Stops at the first broker error: the rest stay due for the sweep."""
    sent = 0
    for row in reports.due(requeue_after_s=settings.requeue_after_s):
        try:
            publish(row.collection, row.key)
        except Exception as exc:  # noqa: BLE001 - the broker is away; the sweep sends them later
            log.warning("report of %s not sent to the queue (%s); the sweep tries again", row.key, exc)
            break
        reports.mark_queued(row.collection, [row.key])
        sent += 1
    return sent


class ReportSweep(threading.Thread):
    """Calls `dispatch_due_reports` every `settings.sweep_interval_s` until `stop()` (in `cxr worker`)."""

    def __init__(self, settings: Settings, publisher: Callable[[], PublishReport]) -> None:
        super().__init__(name="cxr-report-sweep", daemon=True)
        self.settings, self._publisher = settings, publisher
        self._stop = threading.Event()

    def run(self) -> None:
        reports = ReportLedger(self.settings.ledger_path)
        publish = self._publisher()
        while not self._stop.is_set():
            try:
                dispatch_due_reports(self.settings, reports, publish)
            except Exception:  # noqa: BLE001 - the sweep must outlive any one bad round
                log.exception("report sweep round failed")
            self._stop.wait(self.settings.sweep_interval_s)

    def stop(self) -> None:
        self._stop.set()
