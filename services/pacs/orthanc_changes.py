"""Orthanc's `/changes` feed: every NewInstance since the stored sequence number, in order, never skipping one.

`GET /changes?since=SEQ&limit=N` answers {"Changes": [...], "Done": bool, "Last": SEQ}. Each NewInstance is fetched
as stored (`/instances/{id}/file`, no transcoding) and taken in by the intake. The cursor moves only over an unbroken
prefix of handled changes, and only after their instances are durable in the spool and the ledger: when a fetch
still fails after its retries (Orthanc down, timeouts), the run stops there and the next run starts again at that
change. (Orthanc's own sample monitor moves on when a handler fails, and so loses the change.) A permanently bad
instance is recorded in the ledger as failed, so it is visible in `cxr failures` and does not block the feed; one
deleted since (404) is gone and is skipped. `--since` and `--modality` filter on the instance header.
"""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset

from services.errors import PacsError
from services.pacs.http import PacsHttpError, make_session, redact, with_retries
from services.pacs.intake import Intake, read_header
from services.pacs.pull_batch import Batch, PullOptions, PullReport
from services.pacs.trigger import Dispatch

log = logging.getLogger("cxr.pacs")


def _outside(ds: Dataset, opts: PullOptions) -> str | None:
    """Why a fetched instance is outside this pull's --modality/--since filters (None: wanted)."""
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if opts.modalities and modality and modality not in opts.modalities:
        return f"modality {modality} not asked for"
    if opts.since is not None:
        study_date = str(ds.get("StudyDate", "") or "").strip()
        if study_date and study_date < f"{opts.since:%Y%m%d}":
            return "study before --since"
    return None


def pull_orthanc_changes(intake: Intake, opts: PullOptions, *, dispatch: Dispatch | None = None) -> PullReport:
    """Follow Orthanc's changes feed from the stored cursor; see the module docstring."""
    import requests

    session = make_session(opts.auth)
    base = redact(opts.url)
    cursor_name = "orthanc-changes:" + base
    report = PullReport("orthanc-changes")
    batch = Batch(intake, report, dispatch, opts)
    since = int(intake.ledger.cursor(cursor_name) or 0)

    def get(path: str, what: str, **params: object) -> requests.Response:
        def once() -> requests.Response:
            response = session.get(base + path, params=params or None, timeout=opts.timeout_s)
            response.raise_for_status()
            return response

        return with_retries(once, what=what, retries=opts.retries, backoff_s=opts.backoff_s)

    while not batch.full:
        page = get("/changes", "GET /changes", since=since, limit=opts.page_size).json()
        handled = since
        for change in page.get("Changes", []):
            seq = int(change["Seq"])
            is_instance = change.get("ChangeType") == "NewInstance" and change.get("ResourceType") == "Instance"
            if is_instance and not _handle(get, batch, str(change["ID"]), base, opts):
                report.complete = False
                break
            handled = seq
            if batch.full:
                break
        else:
            handled = max(handled, int(page.get("Last", handled)))
        batch.flush()
        if handled != since:
            intake.ledger.set_cursor(cursor_name, str(handled))  # after the batch is durable, never past a failure
            since = handled
        if not report.complete or page.get("Done", True) or not page.get("Changes"):
            break
    if batch.full:
        report.complete = False
    report.cursor = intake.ledger.cursor(cursor_name)
    return report


def _handle(get, batch: Batch, instance_id: str, base: str, opts: PullOptions) -> bool:  # noqa: ANN001
    """Take in one new instance; False when the feed must stop here (a transient failure, or the spool is full)."""
    where = f"{base}/instances/{instance_id}"
    batch.report.listed += 1
    try:
        data = get(f"/instances/{instance_id}/file", f"GET instance {instance_id}").content
    except PacsHttpError as exc:
        if exc.status in (404, 410):  # deleted since it was stored: nothing left to take
            log.info("instance %s was deleted before it could be pulled", instance_id)
            return True
        batch.fail(instance_id, exc.message, permanent=not exc.transient, uid=None, where=where)
        return not exc.transient
    except PacsError as exc:
        batch.fail(instance_id, exc.message, permanent=False, uid=None, where=where)
        return False
    try:
        header = read_header(data)
    except Exception:  # noqa: BLE001 - the intake answers it as unparseable, recorded as a permanent failure
        header = None
    if header is not None:
        if _outside(header, opts) is not None:
            batch.report.refused += 1
            return True
        uid = str(header.get("SOPInstanceUID", "") or "").strip()
        if uid and batch.intake.known(uid):
            batch.report.already += 1
            return True
    outcome = batch.take(data, ref=instance_id, where=where, header=header)
    # stored, refused by the rule, or permanently bad (recorded as failed): move on; spool full or ledger busy: stop
    return outcome.ok or outcome.permanent
