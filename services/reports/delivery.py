"""One report job, as the `report` task runs it: claim the ledger row, build the report (the search runs here, so
this must run where the store can be read), send it, and record the outcome.

- sent: the row is `sent`, with the PDF's and the SR's SOP Instance UIDs;
- the destination failed and a later try may pass: the row stays `pending` with the reason, and the caller waits
  `retry_in` seconds (CXR_REPORT_BACKOFF_S doubling, at most 600 s) before the next try; after CXR_REPORT_RETRIES
  retries it is `failed` (`cxr failures`; `cxr retry` re-arms it);
- the report cannot be made (the film is gone, nothing to compare with) or the destination refuses the objects
  themselves: `failed` at once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from services.config import Settings
from services.errors import CxrError, StoreLockedError, StoreUnavailableError
from services.pipeline.report_ledger import ReportLedger
from services.reports.deliver import DestinationError, send_report

log = logging.getLogger("cxr.reports")
MAX_REPORT_BACKOFF_S = 600.0
TRANSIENT = (StoreLockedError, StoreUnavailableError)


@dataclass(frozen=True)
class DeliveryOutcome:
    state: str  # sent | pending (try again in `retry_in` s) | failed | skipped (nothing to do: sent or unknown)
    reason: str = ""
    retry_in: float | None = None


def backoff_s(settings: Settings, attempts: int) -> float:
    """The wait before try `attempts + 1`."""
    return min(MAX_REPORT_BACKOFF_S, settings.report_backoff_s * 2 ** max(0, attempts - 1))


def deliver(settings: Settings, searcher: object, reports: ReportLedger, collection: str, key: str) -> DeliveryOutcome:
    """Build and send the report of the film `key` of `collection` (see the module docstring). `searcher` is the
    process's Runtime (encoder, store, ledger): the store must be readable here."""
    from services.reports.build import build_report

    row = reports.claim(collection, key)
    if row is None:
        return DeliveryOutcome("skipped", "already sent, failed or unknown")
    item = searcher.ledger.get(key, collection)  # type: ignore[attr-defined]
    if item is None:
        reports.mark_attempt_failed(collection, key, "the film is no longer in the ledger", final=True)
        return DeliveryOutcome("failed", "the film is no longer in the ledger")
    own = settings if settings.collection == collection else settings.model_copy(update={"collection": collection})
    try:
        # by its point: the search starts from the stored vector, and the header comes from the spooled film
        query: Path | str = item.point_id or row.point_id or Path(item.path)
        t0 = time.perf_counter()
        report = build_report(query, settings=own, searcher=searcher, k=settings.report_k)  # type: ignore[arg-type]
        t1 = time.perf_counter()
        send_report(report, own)
        log.info("report of %s: built in %.2f s, sent in %.2f s", key, t1 - t0, time.perf_counter() - t1)
    except (DestinationError, *TRANSIENT) as exc:
        transient = getattr(exc, "transient", True)
        reason = f"{type(exc).__name__}: {exc}"
        final = not transient or row.attempts > settings.report_retries
        reports.mark_attempt_failed(collection, key, reason, final=final)
        if final:
            log.warning("report of %s failed after %d attempt(s): %s", key, row.attempts, reason)
            return DeliveryOutcome("failed", reason)
        wait = backoff_s(settings, row.attempts)
        log.info("report of %s not delivered (attempt %d), retry in %.0f s: %s", key, row.attempts, wait, reason)
        return DeliveryOutcome("pending", reason, wait)
    except (CxrError, OSError, ValueError) as exc:  # cannot be made: no retry can help
        reason = f"{type(exc).__name__}: {exc}"
        reports.mark_attempt_failed(collection, key, reason, final=True)
        log.warning("report of %s cannot be made: %s", key, reason)
        return DeliveryOutcome("failed", reason)
    except Exception as exc:  # a bug, not the film's fault: failed and listed, so a person sees it and retries
        reason = f"unexpected {type(exc).__name__}: {exc}"
        reports.mark_attempt_failed(collection, key, reason, final=True)
        log.exception("report of %s failed unexpectedly", key)
        return DeliveryOutcome("failed", reason)
    pdf_uid = str(report.pdf_dataset.get("SOPInstanceUID", "")) or None
    sr_uid = str(report.sr_dataset.get("SOPInstanceUID", "")) or None
    reports.mark_sent(collection, key, pdf_uid=pdf_uid, sr_uid=sr_uid)
    return DeliveryOutcome("sent")
