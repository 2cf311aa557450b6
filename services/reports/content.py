"""What a similar-cases report shows, gathered once for the PDF page and the SR: the query, the k most similar
films of other patients (one per patient) with their thumbnails, the neighbours' labels, the model and its
evaluation, the collection and the date.

The search is the one every shell runs (services.pipeline.query.search_decoded), with the query's own patient
always excluded and one result per patient. Thumbnails are rendered like the viewer's, from each point's stored
reference; a film whose BurnedInAnnotation is YES is never drawn.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from services.ages import AGE_TOP, top_code
from services.config import Settings
from services.embedding import BatchEncoder
from services.embedding.checkpoint_meta import read_checkpoint_config
from services.errors import CxrError, ModelError, StoredImageError
from services.imaging.thumbnail import to_png
from services.index import Hit, VectorStore
from services.pipeline.ledger import Ledger
from services.pipeline.query import QueryOptions, QueryResult, read_query, search_decoded
from services.pipeline.similarity_band import calibrate
from services.pipeline.stored_image import load_stored_image, stored_image_path
from services.reports.query_film import QueryFilm, film_burned_in

THUMBNAIL_SIDE = 256  # px, longest side: sharp at the PDF's cell size on a reading-room monitor
NOT_EVALUATED = "not evaluated"
UNLABELLED = "(unlabelled)"
STATEMENT = (
    "Decision support, not a diagnosis. These are films of other patients that a model ranks as looking similar "
    "to this one; their labels are the labels of those films, not findings on this patient."
)


@dataclass(frozen=True)
class Picture:
    """A film as the report shows it: a PNG, or why it is not drawn."""

    png: bytes | None
    not_drawn: str | None = None


@dataclass(frozen=True)
class ResultCase:
    """One similar film: what the viewer's result card says about it. `id` is the opaque point UUID."""

    rank: int
    id: str
    score: float
    label: str | None
    age_band: str | None
    view: str | None
    source: str | None
    band: str | None  # the similarity band, as the viewer shows it (issue 11); None when not calibrated
    picture: Picture


@dataclass(frozen=True)
class ReportContent:
    query: QueryFilm
    query_id: str  # the query's point id (deterministic from its SOP UID or bytes), indexed or not
    query_sha256: str
    query_picture: Picture
    results: tuple[ResultCase, ...]
    tally: tuple[tuple[str, int], ...]  # the neighbours' labels, most frequent first
    model_id: str
    evaluation: str  # one line: data set, metric, value; or "not evaluated"
    collection: str
    created: datetime
    patient_excluded: bool  # False when the query names no patient (a PNG not indexed)


def gather_content(
    film: QueryFilm,
    *,
    settings: Settings,
    encoder: BatchEncoder,
    store: VectorStore,
    ledger: Ledger,
    k: int,
    model_path: Path | None = None,
) -> ReportContent:
    """Run the search for `film` and collect everything the report shows."""
    opts = QueryOptions(
        collection=settings.collection,
        k=k,
        filters=(f"patient_hash!={film.patient_hash}",) if film.patient_hash else (),
        exclude_same_patient=True,
        exclude_self=True,
        group_by_patient=True,
        max_pixels=settings.max_pixels,
        min_side=settings.min_side,
    )
    vector = stored_vector(film, encoder.model_id)
    # a stored vector leaves the pixels to the thumbnail alone (a reduced decode); else the search and the
    # query's thumbnail share every pixel
    decoded, sha = read_query(film.path, opts, target_side=None if vector is None else THUMBNAIL_SIDE)
    result: QueryResult = search_decoded(
        decoded, sha, encoder=encoder, store=store, opts=opts, salt=settings.salt, vector=vector
    )
    hits = [h for h in result.hits if h.id != film.point_id]
    query_picture = (
        Picture(None, "burned-in annotation")
        if film.burned_in
        else Picture(to_png(decoded.pixels, THUMBNAIL_SIDE, extent=decoded.extent))
    )
    bands = _similarity_bands(store, settings.collection, encoder.model_id)
    results = tuple(
        _result_case(rank, hit, settings=settings, ledger=ledger, band=bands(hit.score))
        for rank, hit in enumerate(hits, start=1)
    )
    model_id = encoder.model_id or "unknown model"
    return ReportContent(
        query=film,
        query_id=result.query_id,
        query_sha256=sha,
        query_picture=query_picture,
        results=results,
        tally=label_tally(hits),
        model_id=model_id,
        evaluation=evaluation_summary(model_path or settings.model_path),
        collection=settings.collection,
        created=datetime.now(UTC).replace(microsecond=0),
        patient_excluded=result.patient_excluded or film.patient_hash is not None,
    )


def stored_vector(film: QueryFilm, model_id: str | None) -> np.ndarray | None:
    """The query point's stored vector when this encoder made it (the same model id), else None (encode it)."""
    if film.vector is None or not model_id or film.vector_model != model_id:
        return None
    return np.asarray(film.vector, dtype=np.float32)


def _result_case(rank: int, hit: Hit, *, settings: Settings, ledger: Ledger, band: str | None) -> ResultCase:
    p = hit.payload
    return ResultCase(
        rank=rank,
        id=hit.id,
        score=float(hit.score),
        label=_text(p.get("label")),
        age_band=age_decade(p.get("age")),
        view=_text(p.get("view")),
        source=_text(p.get("source")),
        band=band,
        picture=stored_picture(hit.id, p, settings=settings, ledger=ledger),
    )


def stored_picture(point_id: str, payload: Mapping[str, Any], *, settings: Settings, ledger: Ledger) -> Picture:
    """An indexed film's thumbnail, read through its stored reference like the viewer's; never drawn when the
    film says BurnedInAnnotation YES, and a reason instead when this machine cannot read it."""
    try:
        path = stored_image_path(ledger, payload)
        if path.is_file() and film_burned_in(path, settings.max_pixels):
            return Picture(None, "burned-in annotation")
        image = load_stored_image(
            ledger,
            payload,
            point_id,
            max_pixels=settings.max_pixels,
            min_side=settings.min_side,
            target_side=THUMBNAIL_SIDE,
        )
    except StoredImageError:
        return Picture(None, "image not kept here")
    except CxrError:
        return Picture(None, "image unreadable")
    return Picture(to_png(image.pixels, THUMBNAIL_SIDE, extent=image.extent))


def label_tally(hits: list[Hit]) -> tuple[tuple[str, int], ...]:
    """Counts of each label among the hits, most frequent first (ties by name), as the viewer's tally."""
    counts = Counter(str(h.payload.get("label") or UNLABELLED) for h in hits)
    return tuple(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def age_decade(age: object) -> str | None:
    """An age as a ten-year band ("40-49"), the top band as "90+"; None when unknown."""
    years = top_code(age) if isinstance(age, int) and not isinstance(age, bool) else None
    if years is None:
        return None
    if years >= AGE_TOP:
        return f"{AGE_TOP}+"
    low = years // 10 * 10
    return f"{low}-{low + 9}"


def evaluation_summary(model_path: Path) -> str:
    """One line from what the checkpoint's training run recorded: the data sets, the metric and its value (the
    best validation MAP@R, kept in the recipe by services.training.loop); "not evaluated" when none is recorded."""
    try:
        recipe = read_checkpoint_config(Path(model_path))["encoder"].get("recipe") or {}
    except (ModelError, AttributeError):
        return NOT_EVALUATED
    if not isinstance(recipe, dict):
        return NOT_EVALUATED
    value = recipe.get("val_map_at_r")
    if not isinstance(value, int | float):
        return NOT_EVALUATED
    manifests = recipe.get("manifest") or []
    names = [Path(str(m)).parent.name for m in (manifests if isinstance(manifests, list) else [manifests])]
    data = " + ".join(n for n in names if n) or "its training data"
    return f"{data}, validation split; MAP@R {value:.3f}"


def _similarity_bands(store: VectorStore, collection: str, model_id: str | None) -> Callable[[float], str | None]:
    """Score -> the collection's similarity band as the viewer shows it (issue 11), e.g. "very close (p97)"; None
    for every score when the collection is too small to calibrate."""
    calibration = calibrate(store, collection, model_id=model_id)
    if calibration is None:
        return lambda score: None

    def band(score: float) -> str:
        percentile, name = calibration.band(score)
        return f"{name} (p{percentile:.0f})"

    return band


def _text(value: object) -> str | None:
    text = None if value is None else str(value).strip()
    return text or None
