"""Files uploaded to `POST /v1/index`: where they wait for the workers, and when they are deleted.

An upload is kept as DATA_DIR/uploads/<SHA-256 of the kept bytes>.<ext>, written atomically (the same bytes land on
the same name), and de-identified first when the spool is (CXR_SPOOL_DEIDENTIFY; services.pacs.deid). Once every
ledger item of the file is done (indexed or failed, in every collection) and CXR_API_UPLOAD_RETENTION_H has
passed, the worker's sweep deletes it (`release_uploads`), under the ledger's write lock so no re-armed item loses
its file. The indexed point stays; its thumbnail then answers that the image is gone. `uploads_summary` is what
`cxr status` shows: how many are kept, their size and the oldest one's age.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from services.config import Settings
from services.durable import write_atomically
from services.pipeline.ledger import Ledger

log = logging.getLogger("cxr.uploads")

ORIGIN = "upload"
TMP_PREFIX = ".incoming-"
EXTENSIONS = {"dicom": ".dcm", "png": ".png", "jpeg": ".jpg"}
ORPHAN_AFTER_S = 3600.0  # an upload no ledger item names is deleted once this old (it was never recorded)


def uploads_dir(settings: Settings) -> Path:
    return settings.data_dir / "uploads"


def keep_upload(root: Path, data: bytes, kind: str) -> Path:
    """Write `data` durably as ROOT/<sha256>.<ext> and return the path (idempotent: the same bytes, the same file)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / (hashlib.sha256(data).hexdigest() + EXTENSIONS[kind])
    if final.is_file() and final.stat().st_size == len(data):
        return final
    write_atomically(final, data, tmp_prefix=TMP_PREFIX)
    dir_fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return final


def release_uploads(settings: Settings, ledger: Ledger, *, now: float | None = None) -> int:
    """Delete the uploads no ledger item needs any more and kept past the retention; returns how many."""
    root = uploads_dir(settings).resolve()
    before = (time.time() if now is None else now) - settings.api_upload_retention_h * 3600

    def release(path: str) -> bool:
        where = Path(path)
        if where.parent.resolve() != root:  # only files the API kept; never a user's file
            return False
        try:
            where.unlink()
        except FileNotFoundError:
            return False
        return True

    removed = ledger.release_files(ORIGIN, before=before, release=release)
    removed += _orphans(uploads_dir(settings), ledger, before=min(before, time.time() - ORPHAN_AFTER_S))
    if removed:
        log.info("deleted %d uploaded file(s) that were indexed or failed", removed)
    return removed


def _orphans(folder: Path, ledger: Ledger, *, before: float) -> int:
    """Delete uploads no ledger item names, written before `before`: the API kept them and then failed to record
    them (a crash, the broker and the ledger both refusing), so no worker will ever read them."""
    removed = 0
    forms = {folder.absolute(), folder.resolve()}  # the ledger holds the path as submitted (absolute, unresolved)
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if not entry.is_file(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_mtime > before:
            continue
        named = any(ledger.has_file(ORIGIN, form / entry.name) for form in forms)
        if entry.name.startswith(TMP_PREFIX) or not named:
            Path(entry.path).unlink(missing_ok=True)
            removed += 1
    return removed


def uploads_summary(settings: Settings, *, now: float | None = None) -> dict[str, Any]:
    """The uploads kept now: count, bytes, and the oldest one's age in seconds (None when there is none)."""
    now = time.time() if now is None else now
    count, size, oldest = 0, 0, None
    try:
        entries = list(os.scandir(uploads_dir(settings)))
    except FileNotFoundError:
        entries = []
    for entry in entries:
        if entry.name.startswith(TMP_PREFIX) or not entry.is_file(follow_symlinks=False):
            continue
        st = entry.stat(follow_symlinks=False)
        count, size = count + 1, size + st.st_size
        oldest = st.st_mtime if oldest is None else min(oldest, st.st_mtime)
    return {"count": count, "bytes": size, "oldest_age_s": None if oldest is None else round(now - oldest, 1)}
