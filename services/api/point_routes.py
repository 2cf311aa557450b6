"""Indexed points and what they look like: `GET /v1/points/{id}`, `GET /v1/points/{id}/thumbnail`,
`GET /v1/collections`, and `POST /v1/render` (a preview of an uploaded query, rendered like a thumbnail).

A point id is a UUID (anything else is a 422 before any lookup); the thumbnail's file comes from the point's
stored reference only. Thumbnails carry an ETag, answer If-None-Match with 304, and are `Cache-Control: private`
(they show patient images: shared caches must not keep them).
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, File, Header, Query, Request, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from services.api.audit_trail import note
from services.api.images import THUMBNAIL_SIZES, etag, etag_matches, to_png
from services.api.schemas import CollectionOut, CollectionsOut, FacetsOut, PointOut, public_payload, thumbnail_url
from services.api.state import ApiState, get_state
from services.api.uploads import decoded_upload, read_upload, single_file_part
from services.pipeline.facets import collection_facets

router = APIRouter(prefix="/v1", tags=["points"])

SizeOpt = Annotated[
    int,
    Query(ge=THUMBNAIL_SIZES[0], le=THUMBNAIL_SIZES[1], description="Longest side in pixels (aspect kept)."),
]
CACHE_CONTROL = "private, no-cache"  # keep it in the browser only, and revalidate (a cheap 304)
PNG = {200: {"content": {"image/png": {}}, "description": "PNG image"}}


@router.get("/points/{point_id}", response_model=PointOut, summary="One indexed image: its stored payload")
def get_point(request: Request, point_id: uuid.UUID, state: Annotated[ApiState, Depends(get_state)]) -> PointOut:
    rec = state.point(point_id)
    return PointOut(
        id=rec.id, payload=public_payload(rec.payload), thumbnail_url=thumbnail_url(request.scope["root_path"], rec.id)
    )


@router.get(
    "/points/{point_id}/thumbnail",
    response_class=Response,
    responses={**PNG, 304: {"description": "Not modified (If-None-Match)"}},
    summary="An indexed image rendered for display (PNG)",
)
def get_thumbnail(
    point_id: uuid.UUID,
    state: Annotated[ApiState, Depends(get_state)],
    size: SizeOpt = 256,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """Rescale, VOI LUT or window, MONOCHROME1 inversion (a percentile window when the file has none)."""
    rec = state.point(point_id)
    tag = etag(rec.id, rec.payload, size)
    headers = {"ETag": tag, "Cache-Control": CACHE_CONTROL}
    if etag_matches(if_none_match, tag):
        return Response(status_code=304, headers=headers)
    png = state.thumbnails.get(tag)
    if png is None:
        png = to_png(state.point_pixels(rec), size)
        state.thumbnails.put(tag, png)
    return Response(png, media_type="image/png", headers=headers)


@router.post(
    "/render",
    response_class=Response,
    responses=PNG,
    summary="An uploaded image rendered for display",
    dependencies=[Depends(single_file_part)],
)
async def render_upload(
    request: Request,
    file: Annotated[UploadFile, File(description="DICOM, PNG or JPEG.")],
    state: Annotated[ApiState, Depends(get_state)],
    size: SizeOpt = 768,
) -> Response:
    """What the viewer shows as the query: decoded exactly as a search decodes it (a DICOM cannot be shown by a
    browser). Headers X-Image-Width and X-Image-Height give the original size."""
    upload = await read_upload(state.settings, file)
    note(request, query_sha256=upload.sha256)

    def work() -> Response:
        with decoded_upload(upload, state.settings, state.decode_budget, target_side=size) as decoded:
            png = to_png(decoded.pixels, size, extent=decoded.extent)
        headers = {
            "Cache-Control": "private, no-store",
            "X-Image-Width": str(decoded.meta.width),
            "X-Image-Height": str(decoded.meta.height),
        }
        return Response(png, media_type="image/png", headers=headers)

    return await run_in_threadpool(work)


@router.get("/collections", response_model=CollectionsOut, summary="Collections: name, vector size, count")
def list_collections(state: Annotated[ApiState, Depends(get_state)]) -> CollectionsOut:
    infos = state.store().collections()
    return CollectionsOut(
        collections=[CollectionOut(name=c.name, dim=c.dim, count=c.count) for c in infos],
        default=state.settings.collection,
    )


@router.get("/facets", response_model=FacetsOut, summary="The values of label, source, view and sex, with counts")
def get_facets(
    state: Annotated[ApiState, Depends(get_state)],
    collection: Annotated[
        str | None, Query(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Default: the server's collection.")
    ] = None,
) -> FacetsOut:
    """What the filter pickers offer: each value present in the collection and how many films carry it, most
    frequent first; `no_age` films have no age (an age filter leaves them out). Cached per point count."""
    facets = collection_facets(state.store(), collection or state.settings.collection)
    return FacetsOut.model_validate(facets.as_json())
