"""`POST /v1/index`: hand uploaded files, or files already on the server, to the background queue.

The queue is injected: `create_app(..., submitter=...)`, which `cxr serve` wires to
services.pipeline.submission.submit when a Redis broker is configured. Without one this answers 503 and says so;
it never indexes in the request.

- Uploads (form fields `file`, repeatable) are sniffed (415) and decoded once (422/413) so a bad file is refused
  at once, then kept for the workers (services.pipeline.uploads: de-identified first when CXR_SPOOL_DEIDENTIFY is
  on, deleted once indexed or failed). Their names on the client are never used.
- Server-side files (form fields `path`, repeatable) are accepted only inside CXR_API_IMPORT_DIR (403
  otherwise; 404 for a path that is not there): a request can never point the workers at any other file. Every
  file is resolved, a named one and each found walking a named folder, and one whose symlink leads out of the
  folder is refused by name while the rest goes on. Replies name files as the client did, never by server path.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from services.api.audit_trail import note
from services.api.schemas import IndexOut
from services.api.state import ApiState, get_state
from services.api.uploads import Upload, decoded_upload, read_upload
from services.config import Settings
from services.errors import DecodeBusyError, DecodeError
from services.imaging.reasons import DecodeReason, describe_exception
from services.labels import check_label
from services.pacs.deid import BurnedInAnnotationError, Deidentifier, deidentify_bytes
from services.pipeline.sources import Unfound, walk_files
from services.pipeline.uploads import keep_upload, uploads_dir

router = APIRouter(prefix="/v1", tags=["index"])
log = logging.getLogger("cxr.api")

MAX_FILES = 100


def deidentified(upload: Upload, deid: Deidentifier | None) -> bytes:
    """The bytes to keep: a DICOM upload de-identified like the spool when `deid` (CXR_SPOOL_DEIDENTIFY), else as
    sent. DecodeError when it cannot be cleaned (BurnedInAnnotation YES: its pixels carry text)."""
    if deid is None or upload.kind != "dicom":
        return upload.data
    try:
        return deidentify_bytes(deid, upload.data)[0]
    except BurnedInAnnotationError as exc:
        why = str(exc)
    except Exception as exc:  # noqa: BLE001 - it decoded, so this is the writer refusing an odd element
        log.info("upload not de-identified: %s", describe_exception(exc))
        why = "the DICOM file cannot be de-identified"
    raise DecodeError("upload", why, code=DecodeReason.CANNOT_DEIDENTIFY)


def import_path(settings: Settings, raw: str) -> Path:
    """A server-side file named by a request: allowed only inside CXR_API_IMPORT_DIR, after resolving links."""
    root = settings.api_import_dir
    if root is None:
        raise HTTPException(403, "server-side paths are not accepted here: CXR_API_IMPORT_DIR is not set")
    base = Path(root).resolve()
    try:
        candidate = Path(raw) if Path(raw).is_absolute() else base / raw
        resolved = candidate.resolve()
    except (OSError, ValueError, RuntimeError):
        raise HTTPException(422, f"not a usable path: {raw!r}") from None
    if not resolved.is_relative_to(base):
        raise HTTPException(403, f"{raw!r} is outside the import folder (CXR_API_IMPORT_DIR)")
    if not resolved.exists():
        raise HTTPException(404, f"{raw!r} does not exist in the import folder (CXR_API_IMPORT_DIR)")
    return resolved


def import_files(settings: Settings, raw: str, named: Path) -> tuple[list[tuple[Path, str]], list[dict[str, str]]]:
    """The files a named path stands for (itself, or each file walked under it) as (real path, the name the
    client knows it by), and the refused ones with their reason: a file whose real path leaves the import folder
    (a symlink pointing out), a broken link, a FIFO or device. The client's names only: no server path."""
    base = Path(settings.api_import_dir or "").resolve()
    files: list[tuple[Path, str]] = []
    refused: list[dict[str, str]] = []
    for entry in walk_files([named]):
        where = Path(entry.path if isinstance(entry, Unfound) else entry)
        try:
            shown = raw if where == named else f"{raw.rstrip('/')}/{where.relative_to(named).as_posix()}"
        except ValueError:
            shown = f"{raw.rstrip('/')}/.../{where.name}"
        if isinstance(entry, Unfound):
            refused.append({"file": shown, "reason": entry.reason})
            continue
        try:
            real = entry.resolve(strict=True)
        except (OSError, RuntimeError):
            refused.append({"file": shown, "reason": "broken symlink"})
            continue
        if not real.is_relative_to(base):
            refused.append({"file": shown, "reason": "a symlink leading out of the import folder (CXR_API_IMPORT_DIR)"})
            continue
        files.append((real, shown))
    return files, refused


def _client_names(result: Any, names: dict[str, str]) -> Any:
    """The submitter's answer with each unfound file named as the client knows it, never by its server path."""
    if isinstance(result, dict) and isinstance(result.get("unfound"), list):
        result = {**result, "unfound": [_renamed(u, names) for u in result["unfound"]]}
    return result


def _renamed(unfound: Any, names: dict[str, str]) -> Any:
    if isinstance(unfound, dict) and "path" in unfound:
        return {**unfound, "path": names.get(str(unfound["path"]), Path(str(unfound["path"])).name)}
    return unfound


@router.post("/index", response_model=IndexOut, status_code=202, summary="Queue images for indexing")
async def index(
    request: Request,
    state: Annotated[ApiState, Depends(get_state)],
    file: Annotated[list[UploadFile], File(description="Images to index: DICOM, PNG or JPEG.")] = [],  # noqa: B006
    path: Annotated[list[str], Form(description="Files or folders inside CXR_API_IMPORT_DIR.")] = [],  # noqa: B006
    label: Annotated[
        str | None,
        Form(
            max_length=256,
            description="A label for every file of this request: letters, digits, '_', '-', '.' "
            "and spaces, 1-64 characters (services.labels).",
        ),
    ] = None,
) -> IndexOut:
    """202: accepted for the queue (the workers index it). Per-file refusals come back in `refused`."""
    label = check_label(label) if label is not None and label.strip() else None  # LabelError: 422 saying why
    if state.submitter is None:
        raise HTTPException(
            503,
            "indexing needs the background queue, and none is configured: set CXR_REDIS_URL and run the workers "
            "(`cxr worker`), then start `cxr serve` again; or index from the command line with `cxr index`",
        )
    if not file and not path:
        raise HTTPException(422, "give files (form field `file`) or server-side paths (form field `path`)")
    if len(file) + len(path) > MAX_FILES:
        raise HTTPException(413, f"at most {MAX_FILES} files or paths per request")
    settings = state.settings
    named = [(raw, import_path(settings, raw)) for raw in path]  # 403/404/422 for the request, before any work
    uploads: list[tuple[int, Upload]] = []
    refused: list[dict[str, str]] = []
    for i, f in enumerate(file, start=1):
        try:
            uploads.append((i, await read_upload(settings, f)))
        except HTTPException as exc:
            if exc.status_code == 413 and len(file) == 1:
                raise
            refused.append({"file": f"#{i}", "reason": str(exc.detail)})

    deid = Deidentifier(settings.salt) if settings.spool_deidentify else None

    def work() -> IndexOut:
        names: dict[str, str] = {}  # server path -> the client's name for it
        server_paths: list[Path] = []
        for raw, resolved in named:
            files, refused_here = import_files(settings, raw, resolved)
            refused.extend(refused_here)
            for real, shown in files:
                if str(real) not in names:
                    names[str(real)] = shown
                    server_paths.append(real)
        kept: list[Path] = []
        busy: DecodeBusyError | None = None
        for i, upload in uploads:
            try:
                with decoded_upload(upload, settings, state.decode_budget):
                    pass  # decoded once, so a bad file is refused now rather than by a worker
            except DecodeError as exc:
                log.info("upload #%d refused (%s): %s", i, exc.code, exc.detail or exc.reason)
                refused.append({"file": f"#{i}", "reason": exc.reason, "code": exc.code})
                continue
            except DecodeBusyError as exc:  # this one waits for room; the others go on
                busy = exc
                refused.append({"file": f"#{i}", "reason": f"{exc.message}: send it again", "code": exc.code})
                continue
            try:
                data = deidentified(upload, deid)
            except DecodeError as exc:
                refused.append({"file": f"#{i}", "reason": exc.reason, "code": exc.code})
                continue
            kept.append(keep_upload(uploads_dir(settings), data, upload.kind))
            names[str(kept[-1])] = f"#{i}"
        if not kept and not server_paths:
            if busy is not None and all(r.get("code") == busy.code for r in refused):
                raise busy  # 503 with Retry-After: every file only has to wait
            raise HTTPException(422, {"message": "no file could be queued", "refused": refused})
        submitted: dict = {}
        if kept:
            done = state.submitter(kept, label=label, origin="upload", collection=settings.collection)
            submitted["uploads"] = _client_names(done, names)
        if server_paths:
            done = state.submitter(server_paths, label=label, origin="file", collection=settings.collection)
            submitted["paths"] = _client_names(done, names)
        note(
            request,
            uploads=[u.sha256 for _, u in uploads],
            paths=len(server_paths),
            accepted=len(kept) + len(server_paths),
        )
        return IndexOut(accepted=len(kept) + len(server_paths), refused=refused, submitted=submitted)

    return await run_in_threadpool(work)
