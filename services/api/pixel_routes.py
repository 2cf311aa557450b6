"""Original values for window/level in the viewer: `GET /v1/points/{id}/pixels` (an indexed image) and
`POST /v1/pixels` (an uploaded one, as /v1/render takes it).

The body is `application/octet-stream`: little-endian uint16, row-major, X-Height x X-Width, the modality values
(after Rescale Slope/Intercept, before any VOI or window) mapped linearly so X-Value-Min -> 0 and X-Value-Max ->
65535 (services.imaging.modality). X-Window-Center and X-Window-Width are the file's default window in the same
units; X-Photometric says whether low values are white (MONOCHROME1: the array is not inverted). A decode holds
its memory in the app's decode budget, as /v1/render does.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from services.api.audit_trail import note
from services.api.state import ApiState, get_state
from services.api.uploads import read_upload, reserved_decode, single_file_part
from services.errors import DecodeError, ImageTooLargeError, StoredImageError
from services.imaging import max_file_bytes, read_regular_file
from services.imaging.modality import MAX_SIDE, modality_image
from services.pipeline.stored_image import stored_image_path

router = APIRouter(prefix="/v1", tags=["points"])

MaxSideOpt = Annotated[int, Query(ge=32, le=MAX_SIDE, description="Longest side of the array (aspect kept).")]
OCTETS = {
    200: {
        "content": {"application/octet-stream": {}},
        "description": "uint16 little-endian, row-major; headers X-Width, X-Height, X-Value-Min, X-Value-Max, "
        "X-Window-Center, X-Window-Width, X-Photometric, X-Bits-Stored",
    }
}


def _answer(data: bytes, name: str, state: ApiState, max_side: int) -> Response:
    s = state.settings
    with reserved_decode(data, s, state.decode_budget, name=name):
        image = modality_image(data, name, max_pixels=s.max_pixels, min_side=s.min_side, max_side=max_side)
    headers = image.headers() | {"Cache-Control": "private, no-store"}
    return Response(image.to_bytes(), media_type="application/octet-stream", headers=headers)


@router.get(
    "/points/{point_id}/pixels",
    response_class=Response,
    responses=OCTETS,
    summary="An indexed image's original values (16-bit) for window/level",
)
def point_pixels(
    point_id: uuid.UUID, state: Annotated[ApiState, Depends(get_state)], max_side: MaxSideOpt = 1024
) -> Response:
    rec = state.point(point_id)
    path = stored_image_path(state.runtime.ledger, rec.payload)
    try:
        data = read_regular_file(path, max_file_bytes(state.settings.max_pixels))
    except DecodeError as exc:
        raise StoredImageError(f"the image of point {rec.id} cannot be read any more: {exc.reason}") from exc
    try:
        return _answer(data, f"point {rec.id}", state, max_side)
    except DecodeError as exc:
        if isinstance(exc, ImageTooLargeError) or exc.code == "too_large":
            raise  # a 413 that says which limit to raise
        raise StoredImageError(f"the image of point {rec.id} cannot be read any more: {exc.reason}") from exc


@router.post(
    "/pixels",
    response_class=Response,
    responses=OCTETS,
    summary="An uploaded image's original values (16-bit) for window/level",
    dependencies=[Depends(single_file_part)],
)
async def upload_pixels(
    request: Request,
    file: Annotated[UploadFile, File(description="DICOM, PNG or JPEG.")],
    state: Annotated[ApiState, Depends(get_state)],
    max_side: MaxSideOpt = 1024,
) -> Response:
    upload = await read_upload(state.settings, file)
    note(request, query_sha256=upload.sha256)
    return await run_in_threadpool(_answer, upload.data, "upload", state, max_side)
