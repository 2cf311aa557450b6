"""The JSON shapes of the REST API (they are also its OpenAPI schema)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from services.ages import public_age_fields
from services.api.access import sees_admin_fields
from services.index import Hit
from services.pipeline.search_notes import HitNote

# Payload keys the API never sends: `source_uri` is a server-side path (folder names can carry names).
HIDDEN_PAYLOAD_KEYS = frozenset({"source_uri"})
# Payload keys only a caller with the `admin` scope sees: they link a result to a patient, a study or a file.
ADMIN_PAYLOAD_KEYS = frozenset({"patient_hash", "study_uid", "series_uid", "sop_uid", "content_sha256", "source_ref"})
UNLABELLED = "(no label)"


class HitOut(BaseModel):
    rank: int = Field(description="1 = most similar.")
    id: str = Field(description="Point id (UUID).")
    score: float = Field(description="Cosine similarity, or the recommend score for a more-like-these search.")
    payload: dict[str, Any] = Field(
        description="PHI-free stored fields: label, view, sex, age (90 = 90 or over, with age_band '90+'), source, "
        "...; with the admin scope also the UIDs, patient_hash, content_sha256 and source_ref"
    )
    thumbnail_url: str
    percentile: float | None = Field(
        None,
        description="0-100: the score among the collection's typical nearest-neighbour scores (None: a collection "
        "under 50 films, or a recommend score).",
    )
    band: str | None = Field(None, description="'very close', 'close', 'typical' or 'distant' (from the percentile).")
    same_patient: bool = Field(False, description="The hit is the query's own patient (only when not excluded).")


class QueryInfo(BaseModel):
    id: str | None = Field(None, description="The point id the query image would have if indexed.")
    width: int | None = None
    height: int | None = None
    format: str | None = None
    crop: list[int] | None = Field(None, description="The region embedded, in pixels: left, top, right, bottom.")
    patient_excluded: bool = False
    positive: list[str] = []
    negative: list[str] = []
    content_sha256: str | None = Field(None, description="SHA-256 of the uploaded file's bytes (None: an indexed id).")
    indexed: bool = Field(False, description="A point with `id` is in the collection (a link can carry the id).")


class CalibrationOut(BaseModel):
    n: int = Field(description="Films sampled: each one's nearest other-patient neighbour gave one score.")
    p05: float
    p50: float
    p95: float


class WarningOut(BaseModel):
    code: str = Field(description="far_neighbours, one_source, age_group or no_age_dropped.")
    message: str


class SearchOut(BaseModel):
    hits: list[HitOut]
    label_tally: dict[str, int] = Field(description="How many of the hits carry each label, most frequent first.")
    query: QueryInfo
    grouped_by_patient: bool = False
    score: str = Field("cosine", description="'cosine', or 'recommend' for Qdrant's best-score recommend.")
    model: str = Field("", description="The model id of the encoder that embedded the query (its checkpoint id).")
    calibration: CalibrationOut | None = Field(
        None, description="How the bands were made: very close >= p95 > close >= p50 > typical >= p05 > distant."
    )
    warnings: list[WarningOut] = []
    tally_title: str = Field("", description="What the tally is: the labels of the neighbours, not a diagnosis.")


class FacetValue(BaseModel):
    value: str
    count: int


class FacetsOut(BaseModel):
    collection: str
    total: int
    fields: dict[str, list[FacetValue]] = Field(description="label, source, view, sex: values, most frequent first.")
    no_age: int = Field(description="Films without an age (an age filter leaves them out).")


class SimilarIn(BaseModel):
    positive: list[uuid.UUID] = Field(min_length=1, max_length=50, description="Ids to move towards.")
    negative: list[uuid.UUID] = Field([], max_length=50, description="Ids to move away from.")
    k: int = Field(10, ge=1, le=200)
    filters: list[str] = Field([], max_length=32, description="As the CLI: FIELD=VALUE, FIELD=V1,V2, FIELD!=VALUE.")
    exclude_same_patient: bool = Field(False, description="Drop the patients of the positive examples.")
    group_by_patient: bool = Field(False, description="One result per patient, grouped in the store.")


class PointOut(BaseModel):
    id: str
    payload: dict[str, Any]
    thumbnail_url: str


class CollectionOut(BaseModel):
    name: str
    dim: int
    count: int


class CollectionsOut(BaseModel):
    collections: list[CollectionOut]
    default: str


class IndexOut(BaseModel):
    accepted: int
    refused: list[dict[str, str]]
    submitted: dict[str, Any]


def public_payload(payload: dict[str, Any], admin: bool | None = None) -> dict[str, Any]:
    """A stored payload as the API sends it: no hidden keys, the admin-only keys for an admin only, and ages
    top-coded even on points indexed before. `admin` None: as the caller of the request being answered
    (services.api.access.sees_admin_fields; False outside a checked request)."""
    hidden = HIDDEN_PAYLOAD_KEYS
    if not (sees_admin_fields() if admin is None else admin):
        hidden = hidden | ADMIN_PAYLOAD_KEYS
    return public_age_fields({k: v for k, v in payload.items() if k not in hidden})


def thumbnail_url(root_path: str, point_id: str) -> str:
    return f"{root_path}/v1/points/{point_id}/thumbnail"


def hits_out(
    hits: Sequence[Hit], root_path: str, admin: bool | None = None, notes: Sequence[HitNote] | None = None
) -> list[HitOut]:
    """The hits as the API sends them, each payload through `public_payload`, with its band and patient flag."""
    notes = notes if notes is not None else [HitNote(None, None, False)] * len(hits)
    return [
        HitOut(
            rank=i,
            id=h.id,
            score=round(float(h.score), 6),
            payload=public_payload(h.payload, admin),
            thumbnail_url=thumbnail_url(root_path, h.id),
            percentile=note.percentile,
            band=note.band,
            same_patient=note.same_patient,
        )
        for i, (h, note) in enumerate(zip(hits, notes, strict=True), start=1)
    ]


def label_tally(hits: Sequence[Hit]) -> dict[str, int]:
    """Counts of each label among the hits, most frequent first (ties by name): what a reader reads first."""
    counts = Counter(str(h.payload.get("label") or UNLABELLED) for h in hits)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
