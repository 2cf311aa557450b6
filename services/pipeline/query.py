"""Query path: an image (file or bytes) -> vector -> ranked hits, optionally excluding its own patient and itself."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.ages import public_age_fields
from services.config import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE
from services.embedding import BatchEncoder
from services.imaging import DecodedImage, ImageMeta, decode_bytes, max_file_bytes, read_regular_file, to_model_input
from services.index import Hit, VectorStore
from services.index.payload import patient_hash, point_id
from services.pipeline.facets import resolve_in
from services.pipeline.filters import parse_filters


@dataclass(frozen=True)
class QueryOptions:
    collection: str
    k: int = 10
    filters: tuple[str, ...] = ()
    exclude_same_patient: bool = False
    exclude_self: bool = True
    patient_id: str | None = None  # overrides the DICOM PatientID (e.g. for a PNG query)
    group_by_patient: bool = False  # one hit per patient, grouped in the store (full pages)
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = DEFAULT_MIN_SIDE


@dataclass(frozen=True)
class QueryResult:
    query_id: str
    meta: ImageMeta
    hits: list[Hit]
    patient_excluded: bool  # False when exclusion was asked for but the query carries no patient id
    patient_hash: str | None = None  # the query's patient as the store hashes it (server-side only: same_patient)
    filters: tuple[str, ...] = ()  # the filters as applied: values spelt as stored (services.pipeline.facets)


def read_query(path: str | Path, opts: QueryOptions, *, target_side: int | None = None) -> tuple[DecodedImage, str]:
    """Decode a query file; returns the image and its content SHA-256. `target_side` (the encoder's image size)
    allows a reduced decode that gives the same model input; None keeps every pixel (heat maps, crops)."""
    data = read_regular_file(path, max_file_bytes(opts.max_pixels))
    decoded = decode_bytes(data, str(path), max_pixels=opts.max_pixels, min_side=opts.min_side, target_side=target_side)
    return decoded, _sha(data)


def search_bytes(
    data: bytes, name: str, *, encoder: BatchEncoder, store: VectorStore, opts: QueryOptions, salt: bytes
) -> QueryResult:
    decoded = decode_bytes(
        data, name, max_pixels=opts.max_pixels, min_side=opts.min_side, target_side=encoder.image_size
    )
    return search_decoded(decoded, _sha(data), encoder=encoder, store=store, opts=opts, salt=salt)


def search_file(
    path: str | Path, *, encoder: BatchEncoder, store: VectorStore, opts: QueryOptions, salt: bytes
) -> QueryResult:
    decoded, sha = read_query(path, opts, target_side=encoder.image_size)
    return search_decoded(decoded, sha, encoder=encoder, store=store, opts=opts, salt=salt)


def search_decoded(
    decoded: DecodedImage,
    content_sha256: str,
    *,
    encoder: BatchEncoder,
    store: VectorStore,
    opts: QueryOptions,
    salt: bytes,
    vector: np.ndarray | None = None,
) -> QueryResult:
    """Embed one decoded image and rank the collection against it. `vector`: the image's embedding by this
    encoder when already known (an indexed point's stored vector), so it is not encoded again; `decoded` then
    needs only its meta, and any reduced decode will do."""
    qid = point_id(sop_uid=decoded.meta.sop_uid, content_sha256=content_sha256)
    pid = opts.patient_id or decoded.meta.patient_id
    query_patient = patient_hash(pid, salt) if salt or opts.exclude_same_patient else None
    p_hash = query_patient if opts.exclude_same_patient else None
    filters = resolve_in(store, opts.collection, opts.filters)
    flt = parse_filters(filters, exclude_ids=(qid,) if opts.exclude_self else (), exclude_patient=p_hash)
    if vector is None:
        vector = encoder.encode(to_model_input(decoded.pixels, encoder.image_size, extent=decoded.extent)[None])[0]
    if opts.group_by_patient:
        hits = store.search_groups(opts.collection, vector, opts.k, flt, group_by="patient_hash")
    else:
        hits = store.search(opts.collection, vector, opts.k, flt)
    return QueryResult(
        qid, decoded.meta, hits, patient_excluded=p_hash is not None, patient_hash=query_patient, filters=filters
    )


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hits_to_json(hits: Sequence[Hit]) -> list[dict]:
    """The machine-readable result shape shared by the CLI (--json) and the REST API."""
    return [
        {"rank": i, "id": h.id, "score": round(float(h.score), 6), "payload": public_age_fields(h.payload)}
        for i, h in enumerate(hits, start=1)
    ]
