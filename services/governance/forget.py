"""Forget a patient, a study or an instance everywhere cxr keeps it (`cxr forget`, `POST /v1/forget`).

What goes:
- the points, in every collection, whose `patient_hash`, `study_uid` or `sop_uid` is the target's (the UIDs as sent
  and as de-identification rewrites them);
- their ledger items (every collection), their source refs, and the items not yet indexed whose file says it is the
  target's (read from its DICOM header);
- the copies cxr made: spool instances (conflicts kept aside included) and API uploads. A user's own files indexed
  in place (`cxr index DIR`) are theirs, not cxr's: they are left where they are, and said to be;
- the waiting queue messages naming those items (the caller's `purge`, workers.purge).

First a tombstone (salted hashes only) is written, so that nothing of the target comes back meanwhile or later, by
any way in. The API's thumbnail cache holds rendered images keyed by point: once a point is gone it is never
served again (a point lookup comes first). Reports already sent to a PACS are the PACS's to delete.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from services.config import Settings
from services.governance.tombstones import Target, target_hashes, tombstones_at, uid_forms
from services.index import SearchFilter, VectorStore
from services.index.payload import patient_hash
from services.pipeline.ledger import Item, Ledger
from services.pipeline.refs import row_key
from services.pipeline.uploads import uploads_dir

log = logging.getLogger("cxr.forget")
OWN_ORIGINS = ("receiver", "pull", "spool", "upload")  # cxr's own copies: deleted; 'file' is the user's file
Purge = Callable[[set[str]], int]


@dataclass
class ForgetReport:
    kind: str
    dry_run: bool
    points: dict[str, int] = field(default_factory=dict)  # per collection
    ledger_items: int = 0
    spool_files: int = 0
    uploads: int = 0
    user_files_left: int = 0  # files indexed in place: not cxr's to delete
    queue_messages: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def forget(
    settings: Settings,
    target: Target,
    *,
    store: VectorStore,
    ledger: Ledger,
    dry_run: bool = False,
    purge: Purge | None = None,
) -> ForgetReport:
    """Remove `target` everywhere (or, with `dry_run`, count what would go); see the module's docstring."""
    salt = settings.salt
    report = ForgetReport(target.kind, dry_run)
    flt = _point_filter(target, salt)
    doomed: dict[str, list[str]] = {}
    refs: set[str] = set()
    for info in store.collections():
        recs = list(store.scroll(info.name, flt=flt))
        if recs:
            doomed[info.name] = [r.id for r in recs]
            refs.update(str(r.payload["source_ref"]) for r in recs if r.payload.get("source_ref"))
    report.points = {name: len(ids) for name, ids in doomed.items()}
    keys = {row_key(ref) for ref in refs}
    keys.update(i.key for i in ledger.not_indexed() if _is_target(Path(i.path), target, salt))
    items = ledger.items(sorted(keys), None) if keys else []
    files = _own_files(settings, items, refs, ledger) | set(_quarantined(settings, target, salt))
    report.ledger_items = len(items)
    report.user_files_left = len({i.path for i in items if i.origin not in OWN_ORIGINS})
    uploads = uploads_dir(settings).resolve()
    report.uploads = sum(1 for f in files if f.parent.resolve() == uploads)
    report.spool_files = len(files) - report.uploads
    report.notes.append("reports already sent to a PACS are the PACS's to delete")
    if dry_run:
        return report
    tombstones_at(settings.ledger_path, salt).add(target_hashes(target, salt))  # first: nothing comes back meanwhile
    for name, ids in doomed.items():
        store.delete_points(name, ids)
    ledger.erase(keys, refs)
    for path in files:
        path.unlink(missing_ok=True)
    if purge is not None and keys:
        try:
            report.queue_messages = purge(keys)
        except Exception as exc:  # noqa: BLE001 - the broker may be down: the ledger rows are gone, so workers skip
            report.notes.append(f"queue not purged ({type(exc).__name__}); its messages are skipped when consumed")
    log.info("forgot a %s: %s", target.kind, {k: v for k, v in report.to_dict().items() if k != "notes"})
    return report


def _point_filter(target: Target, salt: bytes) -> SearchFilter:
    if target.kind == "patient":
        return SearchFilter(must={"patient_hash": str(patient_hash(target.value, salt))})
    return SearchFilter(must={f"{target.kind}_uid": uid_forms(target.value, salt)})


def _header(path: Path) -> Any | None:
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - not DICOM, gone, unreadable: not the target's as far as can be told
        return None


def _is_target(path: Path, target: Target, salt: bytes) -> bool:
    """True when the DICOM file at `path` is the target's (as sent, or a de-identified copy of it)."""
    ds = _header(path)
    if ds is None:
        return False
    if target.kind == "patient":
        return patient_hash(str(ds.get("PatientID", "") or ""), salt) == patient_hash(target.value, salt)
    attr = "StudyInstanceUID" if target.kind == "study" else "SOPInstanceUID"
    return str(ds.get(attr, "") or "").strip() in uid_forms(target.value, salt)


def _own_files(settings: Settings, items: list[Item], refs: Iterable[str], ledger: Ledger) -> set[Path]:
    """The copies cxr keeps of these items: spool instances and API uploads (never a user's file)."""
    roots = {settings.spool_path.resolve(), uploads_dir(settings).resolve()}
    paths = {Path(i.path) for i in items if i.origin in OWN_ORIGINS}
    paths.update(p for ref in refs if (p := ledger.resolve_ref(ref)) is not None)
    return {p for p in paths if p.parent.resolve() in roots and p.exists()}


def _quarantined(settings: Settings, target: Target, salt: bytes) -> Iterable[Path]:
    """Instances of the target kept aside as UID conflicts (spool/.conflicts)."""
    from services.pacs.spool import CONFLICTS

    folder = settings.spool_path / CONFLICTS
    if folder.is_dir():
        yield from (p for p in folder.glob("*.dcm") if _is_target(p, target, salt))
