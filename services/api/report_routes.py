"""`POST /v1/report`: the similar-cases report of an uploaded film or of an indexed image, as one PDF page or (with
`format=dicom`) a zip of its Encapsulated PDF and Comprehensive SR. The same report `cxr report` makes."""

from __future__ import annotations

import io
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from services.api.audit_trail import note
from services.api.state import ApiState, get_state
from services.api.uploads import read_upload, reserved_decode, single_file_part
from services.reports.build import Report, build_report

# Matplotlib and highdicom load on the first report, not at the server's start (about 40 MB of RSS that a server
# that never makes a report would hold: benchmarks/serve_memory.py). Kept equal to services.reports.pdf.MAX_RESULTS
# (tests/reports check it).
MAX_RESULTS = 20

router = APIRouter(prefix="/v1", tags=["report"])

NO_STORE = {"Cache-Control": "private, no-store"}  # a patient's report: never kept by a shared cache
FILES = {
    200: {
        "content": {"application/pdf": {}, "application/zip": {}},
        "description": "The PDF page, or a zip of the two DICOM files (format=dicom)",
    }
}


@router.post(
    "/report",
    response_class=Response,
    responses=FILES,
    summary="The similar-cases report of a film (PDF, or DICOM in a zip)",
    dependencies=[Depends(single_file_part)],
)
async def report(
    request: Request,
    state: Annotated[ApiState, Depends(get_state)],
    file: Annotated[UploadFile | None, File(description="The query film: DICOM, PNG or JPEG.")] = None,
    form_id: Annotated[uuid.UUID | None, Form(alias="id", description="Or an indexed image's id.")] = None,
    query_id: Annotated[uuid.UUID | None, Query(alias="id", description="Or an indexed image's id.")] = None,
    k: Annotated[int, Query(ge=1, le=MAX_RESULTS, description="How many similar films (one per patient).")] = 10,
    format: Annotated[Literal["pdf", "dicom"], Query(description="pdf, or dicom: a zip of the two objects.")] = "pdf",  # noqa: A002
) -> Response:
    """Multipart field `file`, or `id` (form field or query parameter): exactly one. The results are films of
    other patients only, one per patient. A PNG or JPEG query's DICOM objects are filed under a new study."""
    point = form_id or query_id
    if (file is None) == (point is None):
        raise HTTPException(422, "send either a `file` or the `id` of an indexed image, not both or neither")
    settings = state.settings
    upload = await read_upload(settings, file) if file is not None else None
    note(request, **({"query_sha256": upload.sha256} if upload else {"query_id": str(point)}))

    def work() -> Report:
        state.encoder(), state.store()  # 503 while they load
        if upload is None:
            return build_report(str(point), settings=settings, searcher=state.runtime, k=k)
        with reserved_decode(upload.data, settings, state.decode_budget), tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"query.{upload.kind}"  # deleted with the folder as soon as the report is built
            path.write_bytes(upload.data)
            return build_report(path, settings=settings, searcher=state.runtime, k=k)

    built = await run_in_threadpool(work)
    note(request, collection=settings.collection, results=list(built.hit_ids))
    if format == "pdf":
        headers = {**NO_STORE, "Content-Disposition": 'inline; filename="cxr-similar-cases.pdf"'}
        return Response(built.pdf, media_type="application/pdf", headers=headers)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        from services.reports.dicom_pdf import to_bytes

        zf.writestr("report-pdf.dcm", to_bytes(built.pdf_dataset))
        zf.writestr("report-sr.dcm", to_bytes(built.sr_dataset))
    headers = {**NO_STORE, "Content-Disposition": 'attachment; filename="cxr-similar-cases.zip"'}
    return Response(buf.getvalue(), media_type="application/zip", headers=headers)
