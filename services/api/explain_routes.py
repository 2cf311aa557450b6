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

What the app provides, on `app.state`, before serving (the router reads it per request, nothing at import):
- `app.state.runtime` (required): a `services.pipeline.Runtime`, or anything with `.encoder` (a BatchEncoder),
  `.store` (a VectorStore) and `.settings` (a Settings: `collection`, `max_pixels`, `min_side`).
- `app.state.load_point_pixels` (optional): `Callable[[str], np.ndarray]`, point id -> decoded grey pixels in
  [0, 1]; raise LookupError for an unknown id. Default: `explain.load_point_pixels` over the runtime's store and
  collection, from the payload's stored reference (the same source a thumbnail comes from).
- `app.state.read_upload` (optional): `async (UploadFile) -> bytes` that enforces the app's upload rules (size
  limit on the stream -> 413, magic-byte sniffing -> 415). Default: read in chunks up to
  `settings.api_max_upload_mb` (64 MiB when that setting does not exist), accept DICOM, PNG and JPEG by magic.
- `app.state.explainer`: written by the router (one `Explainer` per encoder, built on first use).

Include it with `app.include_router(router, dependencies=[Depends(<the app's bearer-token check>)])`.
Status codes: 404 unknown point or collection, 409 an indexed point whose image is gone, 413, 415, 422 a file that
does not decode (or a malformed id), 503 no model.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from services.embedding.explain import (
    Explainer,
    PairExplanation,
    StoredImageError,
    load_point_pixels,
    overlay_png,
    pair_png,
)
from services.errors import CollectionNotFoundError, DecodeError, ModelError
from services.imaging import decode_bytes, is_dicom

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
_CHUNK = 1 << 20
_DEFAULT_MAX_UPLOAD_MB = 64
_explainer_lock = threading.Lock()


def get_runtime(request: Request) -> Any:
    """The app's Runtime (encoder, store, settings); 503 until the app has set one."""
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise HTTPException(503, "the service is starting: no model or store yet")
    return runtime


def get_explainer(request: Request) -> Explainer:
    """The Explainer for the runtime's current encoder, built once and kept on app.state."""
    runtime = get_runtime(request)
    try:
        encoder = runtime.encoder
    except ModelError as exc:
        raise HTTPException(503, f"no model: {exc.message}") from exc
    with _explainer_lock:
        cached = getattr(request.app.state, "explainer", None)
        if cached is None or cached.base is not encoder.encoder:
            cached = Explainer(encoder)
            request.app.state.explainer = cached
    return cached


def get_point_loader(request: Request) -> Callable[[str], np.ndarray]:
    """id -> decoded pixels: the app's own loader when it set one, else the payload's stored reference."""
    custom = getattr(request.app.state, "load_point_pixels", None)
    if custom is not None:
        return custom
    runtime = get_runtime(request)
    settings = runtime.settings
    from services.pipeline.refs import ref_resolver  # payloads carry opaque refs; the ledger knows the files

    def load(point_id: str) -> np.ndarray:
        return load_point_pixels(
            runtime.store,
            settings.collection,
            point_id,
            resolve_ref=ref_resolver(runtime.ledger),
            max_pixels=settings.max_pixels,
            min_side=settings.min_side,
        )

    return load


async def read_query_upload(request: Request, file: UploadFile) -> bytes:
    """The uploaded bytes, through the app's reader when it set one (413 over the limit, 415 not an image)."""
    custom: Callable[[UploadFile], Awaitable[bytes]] | None = getattr(request.app.state, "read_upload", None)
    if custom is not None:
        return await custom(file)
    settings = get_runtime(request).settings
    limit = int(getattr(settings, "api_max_upload_mb", _DEFAULT_MAX_UPLOAD_MB)) * 1024 * 1024
    parts, size = [], 0
    while chunk := await file.read(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"the upload is larger than {limit // (1024 * 1024)} MiB")
        parts.append(chunk)
    data = b"".join(parts)
    if not (is_dicom(data[:512]) or data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"))):
        raise HTTPException(415, "the upload is not a DICOM, PNG or JPEG file (checked by its first bytes)")
    return data


@router.get("/explain", summary="Heat maps of why two indexed images are similar")
def explain_points(
    request: Request,
    query: Annotated[uuid.UUID, Query(description="Point id of the query image.")],
    result: ResultId,
    fmt: FormatOpt = "json",
    method: MethodOpt = "relevance",
    image: SideOpt = "pair",
) -> Response:
    """Explain an indexed pair: PNG overlay(s) or JSON maps on the patch grid."""
    explainer = get_explainer(request)
    load = get_point_loader(request)
    q_pixels = _load(load, str(query))
    r_pixels = _load(load, str(result))
    explanation = _explain(explainer, q_pixels, r_pixels, method)
    return _respond(explanation, q_pixels, r_pixels, str(query), str(result), fmt, image)


@router.post("/explain", summary="Heat maps of why an indexed image is similar to an uploaded query")
async def explain_upload(
    request: Request,
    result: ResultId,
    file: Annotated[UploadFile, File(description="The query image: DICOM, PNG or JPEG.")],
    fmt: FormatOpt = "json",
    method: MethodOpt = "relevance",
    image: SideOpt = "pair",
) -> Response:
    """Explain (uploaded query, indexed result)."""
    data = await read_query_upload(request, file)
    settings = get_runtime(request).settings

    def work() -> Response:  # decoding, loading the model and the passes are blocking: off the event loop
        explainer = get_explainer(request)
        load = get_point_loader(request)
        try:
            decoded = decode_bytes(
                data, file.filename or "<upload>", max_pixels=settings.max_pixels, min_side=settings.min_side
            )
        except DecodeError as exc:
            raise HTTPException(422, f"the query cannot be read: {exc.reason}") from exc
        r_pixels = _load(load, str(result))
        explanation = _explain(explainer, decoded.pixels, r_pixels, method)
        return _respond(explanation, decoded.pixels, r_pixels, None, str(result), fmt, image)

    return await run_in_threadpool(work)


def _load(load: Callable[[str], np.ndarray], point_id: str) -> np.ndarray:
    try:
        return load(point_id)
    except LookupError as exc:
        raise HTTPException(404, str(exc).strip("'\"")) from exc
    except CollectionNotFoundError as exc:
        raise HTTPException(404, exc.message) from exc
    except StoredImageError as exc:
        raise HTTPException(409, exc.message) from exc


def _explain(explainer: Explainer, query: np.ndarray, result: np.ndarray, method: str) -> PairExplanation:
    try:
        return explainer.explain(query, result, method=method)  # type: ignore[arg-type]
    except ModelError as exc:
        raise HTTPException(503, exc.message) from exc


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
