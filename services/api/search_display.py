"""The reading aids of a search answer: each hit's band and same-patient flag, the calibration behind the bands,
the warnings and the tally's title (services.pipeline.search_notes says what each means)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.api.schemas import CalibrationOut, WarningOut, hits_out, label_tally
from services.index import Hit, VectorStore
from services.pipeline.facets import collection_facets
from services.pipeline.filters import age_filtered
from services.pipeline.search_notes import hit_notes, tally_title, warnings_for
from services.pipeline.similarity_band import calibrate


def display_fields(
    store: VectorStore,
    collection: str,
    hits: Sequence[Hit],
    *,
    root_path: str,
    model_id: str | None,
    query_patient: str | None,
    query_age: int | None,
    filters: Sequence[str],
    cosine: bool = True,
) -> dict[str, Any]:
    """The SearchOut fields that come from the hits: hits, label_tally, tally_title, model, calibration,
    warnings. The calibration is cached per collection state (services.pipeline.similarity_band)."""
    calibration = calibrate(store, collection, model_id=model_id)
    dropped = collection_facets(store, collection).no_age if age_filtered(filters) else None
    notes = hit_notes(hits, calibration, query_patient=query_patient, cosine=cosine)
    warnings = warnings_for(hits, calibration, query_age=query_age, no_age_dropped=dropped, cosine=cosine)
    return {
        "hits": hits_out(hits, root_path, notes=notes),
        "label_tally": label_tally(hits),
        "tally_title": tally_title(len(hits)),
        "model": model_id or "",
        "calibration": CalibrationOut(**calibration.summary()) if calibration is not None else None,
        "warnings": [WarningOut(**w) for w in warnings],
    }
