"""`POST /v1/search` (an uploaded image, optionally a region of it) and `POST /v1/search/similar` (more like these
indexed images, Qdrant's recommend)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from services.api.audit_trail import note
from services.api.schemas import QueryInfo, SearchOut, SimilarIn
from services.api.search_display import display_fields
from services.api.state import ApiState, get_state
from services.api.uploads import apply_crop, crop_box, decoded_upload, parse_crop, read_upload, single_file_part
from services.errors import CxrError, PointNotFoundError
from services.index import SearchFilter
from services.index.store import excluding
from services.pipeline.facets import resolve_in
from services.pipeline.filters import FilterSyntaxError, parse_filters
from services.pipeline.query import QueryOptions, search_decoded

router = APIRouter(prefix="/v1", tags=["search"])

MAX_K = 200
FilterOpt = Annotated[
    list[str],
    Query(
        alias="filter",
        max_length=200,
        description="Repeatable, as the CLI: FIELD=VALUE, FIELD=V1,V2 (any of), FIELD!=VALUE "
        "(label, view, sex, age, source, modality, ...).",
    ),
]
CropOpt = Annotated[
    str | None,
    Query(
        description="Search by region: x0,y0,x1,y1. Four numbers all within [0, 1] are fractions of the width and "
        "height (0,0,1,1 = the whole image); otherwise they are pixels. Only the region is embedded.",
        max_length=100,
    ),
]


def _filter(expressions: list[str], **kwargs: object) -> SearchFilter | None:
    try:
        return parse_filters(expressions, **kwargs)  # type: ignore[arg-type]
    except FilterSyntaxError:
        raise
    except CxrError as exc:  # e.g. a field given no values
        raise FilterSyntaxError(exc.message) from exc


@router.post(
    "/search",
    response_model=SearchOut,
    summary="The indexed X-rays most similar to an uploaded one",
    dependencies=[Depends(single_file_part)],
)
async def search(
    request: Request,
    file: Annotated[UploadFile, File(description="The query image: DICOM, PNG or JPEG (sniffed by its bytes).")],
    state: Annotated[ApiState, Depends(get_state)],
    k: Annotated[int, Query(ge=1, le=MAX_K, description="How many results.")] = 10,
    filters: FilterOpt = [],  # noqa: B006 - FastAPI copies defaults
    exclude_same_patient: Annotated[bool, Query(description="Drop the query's own patient (DICOM).")] = False,
    group_by_patient: Annotated[bool, Query(description="One result per patient, grouped in the store.")] = False,
    crop: CropOpt = None,
    include_self: Annotated[bool, Query(description="Keep the query image itself if it is indexed.")] = False,
) -> SearchOut:
    """Multipart field `file`; the options are query parameters. The `label_tally` counts the labels of the hits."""
    box = parse_crop(crop)
    _filter(filters)  # a bad filter is a 422 before any work
    upload = await read_upload(state.settings, file)
    note(request, query_sha256=upload.sha256)
    settings = state.settings

    def work() -> SearchOut:
        encoder, store = state.encoder(), state.store()
        opts = QueryOptions(
            collection=settings.collection,
            k=k,
            filters=tuple(filters),
            exclude_same_patient=exclude_same_patient,
            exclude_self=not include_self,
            group_by_patient=group_by_patient,
            max_pixels=settings.max_pixels,
            min_side=settings.min_side,
        )
        # A crop is in the upload's own pixels: that decode keeps them all; otherwise it is reduced to the model's.
        side = None if box is not None else encoder.image_size
        with decoded_upload(upload, settings, state.decode_budget, target_side=side) as decoded:
            if box is not None:
                decoded = apply_crop(decoded, box, settings.min_side)
            result = search_decoded(decoded, upload.sha256, encoder=encoder, store=store, opts=opts, salt=settings.salt)
        note(request, collection=settings.collection, results=[h.id for h in result.hits])
        region = None if box is None else list(crop_box(box, result.meta.height, result.meta.width))
        shown = display_fields(
            store,
            settings.collection,
            result.hits,
            root_path=request.scope.get("root_path", ""),
            model_id=encoder.model_id,
            query_patient=result.patient_hash,
            query_age=result.meta.age,
            filters=result.filters,
        )
        return SearchOut(
            **shown,
            query=QueryInfo(
                id=result.query_id,
                width=result.meta.width,
                height=result.meta.height,
                format=result.meta.format,
                crop=region,
                patient_excluded=result.patient_excluded,
                content_sha256=upload.sha256,
                indexed=bool(store.existing_ids(settings.collection, [result.query_id])),
            ),
            grouped_by_patient=group_by_patient,
        )

    return await run_in_threadpool(work)


@router.post("/search/similar", response_model=SearchOut, summary="More like these indexed images")
def similar(request: Request, body: SimilarIn, state: Annotated[ApiState, Depends(get_state)]) -> SearchOut:
    """Towards `positive` and away from `negative` (SMILY's refine-by-example), with Qdrant's best-score recommend.

    With one positive and no negative this is a plain nearest-neighbour search from that image (cosine scores);
    otherwise scores are recommend scores. The examples themselves are never returned.
    """
    store, settings = state.store(), state.settings
    positive = [str(p) for p in body.positive]
    negative = [str(n) for n in body.negative]
    if set(positive) & set(negative):
        raise HTTPException(422, "an id cannot be both a positive and a negative example")
    examples = {r.id: r for r in store.retrieve(settings.collection, positive + negative, with_vectors=True)}
    missing = [pid for pid in positive + negative if pid not in examples]
    if missing:
        raise PointNotFoundError(f"no point {', '.join(missing)} in collection {settings.collection!r}")
    patients = sorted({str(h) for p in positive if (h := examples[p].payload.get("patient_hash"))})
    filters = resolve_in(store, settings.collection, body.filters) if body.filters else ()
    flt = _filter(list(filters))
    if body.exclude_same_patient and patients:
        flt = excluding(flt, values={"patient_hash": patients})
    group_by = "patient_hash" if body.group_by_patient else None
    if len(positive) == 1 and not negative:
        vector = examples[positive[0]].vector
        one = excluding(flt, positive)
        if group_by:
            hits = store.search_groups(settings.collection, vector, body.k, one, group_by=group_by)
        else:
            hits = store.search(settings.collection, vector, body.k, one)
        score = "cosine"
    else:
        hits = store.recommend(settings.collection, positive, negative, body.k, flt, group_by=group_by)
        score = "recommend"
    note(request, positive=positive, negative=negative, results=[h.id for h in hits])
    first = examples[positive[0]].payload
    one = len(positive) == 1
    shown = display_fields(
        store,
        settings.collection,
        hits,
        root_path=request.scope.get("root_path", ""),
        model_id=first.get("model_id"),
        query_patient=first.get("patient_hash") if one else None,
        query_age=first.get("age") if one else None,
        filters=filters,
        cosine=score == "cosine",
    )
    return SearchOut(
        **shown,
        query=QueryInfo(
            id=positive[0] if one else None,
            positive=positive,
            negative=negative,
            patient_excluded=bool(body.exclude_same_patient and patients),
            indexed=one,
        ),
        grouped_by_patient=body.group_by_patient,
        score=score,
    )
