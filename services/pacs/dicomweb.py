"""DICOMweb pull: QIDO-RS over StudyDate windows, series filtered before fetching, WADO-RS with transfer-syntax=*.

Offset paging is stable only while the PACS does not change (an instance stored or deleted between two pages shifts
every later offset). So studies are found by StudyDate windows that are split in two (sharing their middle day)
until each answer fits in one page: no offsets at all. Only a single day with more studies than a page is paged, with
pages that overlap by a tenth. Every UID is de-duplicated. A rerun starts `overlap_days` before the last complete
scan's day, and instances already in the ledger are not fetched again, so it fetches only what is new.

Without --since and without a cursor, the first query asks for everything; if that fits in a page it is complete,
else the windows run from 1900. Studies with no StudyDate at all are then found only within that first page (a
date range cannot match them); use the orthanc-changes mode for such archives.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any, TypeVar

from services.errors import PacsError
from services.pacs.acceptance import OUT_OF_RESOURCES, series_refusal
from services.pacs.http import PacsHttpError, make_session, redact, with_retries
from services.pacs.intake import Intake
from services.pacs.pull_batch import Batch, PullOptions, PullReport
from services.pacs.trigger import Dispatch

log = logging.getLogger("cxr.pacs")
T = TypeVar("T")

EARLIEST = date(1900, 1, 1)
ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)


def _value(record: dict[str, Any], tag: str) -> str | None:
    values = (record.get(tag) or {}).get("Value") or []
    return str(values[0]).strip() if values and values[0] is not None else None


def _cursor_since(cursor: str | None, overlap_days: int) -> date | None:
    if not cursor:
        return None
    try:
        return date.fromisoformat(cursor) - timedelta(days=overlap_days)
    except ValueError:
        return None


class _Scanner:
    """Finds every study UID in [since, until] without relying on stable offsets.

    No ModalitiesInStudy filter: Orthanc 1.10 applies `limit`/`offset` before that filter, so a page comes back
    short while more studies match (measured: 6 matching studies, limit 2, offset 1 gave 1). A short page would
    read as "window complete". Modalities are filtered on the series records instead."""

    def __init__(self, client: Any, call: Callable[[Callable[[], T], str], T], page: int) -> None:
        self.client, self.call, self.page = client, call, page
        self.queries = 0

    def _query(self, lo: date | None, hi: date | None, offset: int = 0) -> list[dict]:
        filters: dict[str, str] = {}
        if lo is not None and hi is not None:
            filters["StudyDate"] = f"{lo:%Y%m%d}-{hi:%Y%m%d}"
        self.queries += 1
        return self.call(
            lambda: self.client.search_for_studies(search_filters=filters, limit=self.page, offset=offset),
            "QIDO-RS studies",
        )

    def studies(self, since: date | None, until: date) -> set[str]:
        found: set[str] = set()

        def keep(records: list[dict]) -> None:
            found.update(uid for uid in (_value(r, "0020000D") for r in records) if uid)

        lo = since
        if lo is None:
            first = self._query(None, None)
            keep(first)
            if len(first) < self.page:
                return found
            lo = EARLIEST
        windows = [(lo, until)]
        while windows:
            a, b = windows.pop()
            records = self._query(a, b)
            if len(records) < self.page:
                keep(records)
            elif a == b:
                self._page_one_day(a, records, keep)
            elif (b - a).days == 1:
                windows += [(a, a), (b, b)]
            else:
                mid = a + (b - a) // 2
                windows += [(a, mid), (mid, b)]  # they share the middle day: de-duplicated by UID
        return found

    def _page_one_day(self, day: date, records: list[dict], keep: Callable) -> None:
        step = self.page - max(1, self.page // 10)  # overlapping pages survive a few deletions between two pages
        offset = 0
        while True:
            keep(records)
            if len(records) < self.page:
                return
            offset += step
            records = self._query(day, day, offset)


def _encode(ds: Any) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)  # as fetched: same transfer syntax, pixel data untouched
    return buf.getvalue()


def pull_dicomweb(intake: Intake, opts: PullOptions, *, dispatch: Dispatch | None = None) -> PullReport:
    """QIDO-RS to find, WADO-RS to fetch; see the module docstring."""
    from dicomweb_client import DICOMwebClient

    client = DICOMwebClient(opts.url, session=make_session(opts.auth), timeout=opts.timeout_s)
    client.set_http_retry_params(retry=False)  # our own retries cover timeouts and connection errors too

    def call(fn: Callable[[], T], what: str) -> T:
        return with_retries(fn, what=what, retries=opts.retries, backoff_s=opts.backoff_s)

    report = PullReport("dicomweb")
    batch = Batch(intake, report, dispatch, opts)
    base = redact(opts.url)
    cursor_name = "dicomweb:" + base
    since = opts.since or _cursor_since(intake.ledger.cursor(cursor_name), opts.overlap_days)
    scan_day = date.today()
    scanner = _Scanner(client, call, opts.page_size)
    studies = scanner.studies(since, scan_day + timedelta(days=1))
    log.info("dicomweb pull from %s: %d stud(ies) in %d QIDO queries", base, len(studies), scanner.queries)
    seen: set[str] = set()
    stopped = False
    for study in sorted(studies):
        if stopped or batch.full:
            break
        try:
            series_list = call(lambda s=study: client.search_for_series(s, fields=["BodyPartExamined"]), "QIDO series")
        except PacsError as exc:
            batch.fail(study, exc.message, permanent=False, uid=None, where=f"{base}/studies/{study}")
            continue
        for series in series_list:
            series_uid = _value(series, "0020000E")
            modality, body_part = _value(series, "00080060"), _value(series, "00180015")
            if not series_uid or (opts.modalities and (modality or "").upper() not in opts.modalities):
                continue
            if series_refusal(modality, body_part):
                report.refused += int(_value(series, "00201209") or 1)
                continue
            stopped = _pull_series(client, call, batch, seen, base, study, series_uid)
            batch.flush()
            if stopped or batch.full:
                break
    batch.flush()
    transient = any(not f.permanent for f in report.failed)
    report.complete = not (stopped or transient or batch.full)
    if report.complete:
        intake.ledger.set_cursor(cursor_name, scan_day.isoformat())  # only once everything listed is durable
    report.cursor = intake.ledger.cursor(cursor_name)
    return report


def _pull_series(client: Any, call: Callable, batch: Batch, seen: set[str], base: str, study: str, series: str) -> bool:
    """Fetch the new instances of one series; True when the pull must stop (the spool is full)."""
    where_series = f"{base}/studies/{study}/series/{series}"
    uids: list[str] = []
    offset, page = 0, batch.opts.page_size
    while True:
        try:
            records = call(
                lambda o=offset: client.search_for_instances(study, series, limit=page, offset=o), "QIDO instances"
            )
        except PacsError as exc:
            batch.fail(series, exc.message, permanent=False, uid=None, where=where_series)
            return False
        uids += [u for u in (_value(r, "00080018") for r in records) if u]
        if len(records) < page:
            break
        offset += page - max(1, page // 10)
    for uid in dict.fromkeys(uids):
        if uid in seen:
            continue
        seen.add(uid)
        batch.report.listed += 1
        if batch.intake.known(uid):
            batch.report.already += 1
            continue
        where = f"{where_series}/instances/{uid}"
        try:
            ds = call(
                lambda u=uid: client.retrieve_instance(study, series, u, media_types=ANY_TRANSFER_SYNTAX),
                f"WADO-RS {uid}",
            )
            data = _encode(ds)
        except PacsHttpError as exc:
            batch.fail(uid, exc.message, permanent=not exc.transient, uid=uid, where=where)
            continue
        except PacsError as exc:
            batch.fail(uid, exc.message, permanent=False, uid=uid, where=where)
            continue
        except Exception as exc:  # noqa: BLE001 - an answer that is not a DICOM instance
            batch.fail(uid, f"not a DICOM instance ({type(exc).__name__})", permanent=True, uid=uid, where=where)
            continue
        outcome = batch.take(data, ref=uid, where=where, expected_uid=uid)
        if outcome.status == OUT_OF_RESOURCES:
            return True
        if batch.full:
            return False
    return False
