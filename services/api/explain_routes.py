"""`/v1/explain`: why a result is similar to a query, as a heat map on each image (services.embedding.explain).

- `GET /v1/explain?query=ID&result=ID`: two indexed points.
- `POST /v1/explain?result=ID`: an uploaded query (multipart form field `file`: PNG, JPEG or DICOM) and an indexed
  result.
- Options: `format=json|png` (default json), `method=relevance|occlusion` (occlusion is the slow "verify" mode,
  about 100 forward passes per image), and with `format=png`, `image=pair|query|result` (pair: query left,
  result right, each with its own map).

JSON: `{"query": {"id", "map"}, "result": {"id", "map"}, "similarity", "method", "grid": [rows, cols],
"patch_size", "image_size"}`; each map is rows of floats in [0, 1] on the model's patch grid (upsample it over the
image). An uploaded query has `"id": null`.

Like the other routers it works through the app's ApiState: the model behind the same readiness gate as search
(503 with the reason until it is loaded, so a request never starts a second load), the point's pixels from its
stored reference (as its thumbnail), uploads under the app's rules. Domain errors go through the app's error map.
Status codes: 404 unknown point or collection, 409 an indexed point whose image is gone, 413, 415, 422 a file that
does not decode (with its `reason` code), several `file` parts, or a malformed id, 503 the model is not ready or the
decode memory budget is taken.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from services.api.audit_trail import note
from services.api.state import ApiState, get_state
from services.api.uploads import decoded_upload, read_upload, single_file_part
from services.embedding.overlay import overlay_png, pair_png

if TYPE_CHECKING:
    from services.embedding.explain import PairExplanation

router = APIRouter(prefix="/v1", tags=["explain"])

ResultId = Annotated[uuid.UUID, Query(description="Point id of the result image.")]
FormatOpt = Annotated[
    Literal["json", "png"], Query(alias="format", description="json: maps on the patch grid; png: overlays.")
]
MethodOpt = Annotated[
    Literal["relevance", "occlusion"], Query(description="relevance (fast) or occlusion (the slow verify mode).")
]
SideOpt = Annotated[
    Literal["pair", "query", "result"], Query(description="With format=png: both side by side, or one of them.")
]


@router.get("/explain", summary="Heat maps of why two indexed images are similar")
def explain_points(
    request: Request,
    query: Annotated[uuid.UUID, Query(description="Point id of the query image.")],
    result: ResultId,
    state: Annotated[ApiState, Depends(get_state)],
    fmt: FormatOpt = "json",
    method: MethodOpt = "relevance",
    image: SideOpt = "pair",
) -> Response:
    """Explain an indexed pair: PNG overlay(s) or JSON maps on the patch grid."""
    note(request, query=str(query), result=str(result))
    explainer = state.explainer()
    q_pixels = state.point_pixels(state.point(query))
    r_pixels = state.point_pixels(state.point(result))
    explanation = explainer.explain(q_pixels, r_pixels, method=method)
    return _respond(explanation, q_pixels, r_pixels, str(query), str(result), fmt, image)


@router.post(
    "/explain",
    summary="Heat maps of why an indexed image is similar to an uploaded query",
    dependencies=[Depends(single_file_part)],
)
async def explain_upload(
    request: Request,
    result: ResultId,
    file: Annotated[UploadFile, File(description="The query image: DICOM, PNG or JPEG.")],
    state: Annotated[ApiState, Depends(get_state)],
    fmt: FormatOpt = "json",
    method: MethodOpt = "relevance",
    image: SideOpt = "pair",
) -> Response:
    """Explain (uploaded query, indexed result)."""
    upload = await read_upload(state.settings, file)
    note(request, query_sha256=upload.sha256, result=str(result))

    def work() -> Response:  # decoding and the model passes are blocking: off the event loop
        explainer = state.explainer()
        r_pixels = state.point_pixels(state.point(result))
        with decoded_upload(upload, state.settings, state.decode_budget) as decoded:
            explanation = explainer.explain(decoded.pixels, r_pixels, method=method)
            return _respond(explanation, decoded.pixels, r_pixels, None, str(result), fmt, image)

    return await run_in_threadpool(work)


def _respond(
    explanation: PairExplanation,
    q_pixels: np.ndarray,
    r_pixels: np.ndarray,
    query_id: str | None,
    result_id: str,
    fmt: str,
    image: str,
) -> Response:
    headers = {"Cache-Control": "private, max-age=300"}
    if fmt == "json":
        body = explanation.to_json()
        body["query"]["id"] = query_id
        body["result"]["id"] = result_id
        return JSONResponse(body, headers=headers)
    if image == "query":
        png = overlay_png(q_pixels, explanation.query_map)
    elif image == "result":
        png = overlay_png(r_pixels, explanation.result_map)
    else:
        png = pair_png(q_pixels, r_pixels, explanation)
    headers["X-Similarity"] = f"{explanation.similarity:.6f}"
    return Response(png, media_type="image/png", headers=headers)
