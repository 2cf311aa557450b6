"""The film a report is about: a DICOM, PNG or JPEG file, or an indexed point (read through its stored reference).

A DICOM query brings its header (without pixels): the report's Patient and Study modules are copied from it, and
its BurnedInAnnotation decides whether it may be drawn. A PNG or JPEG query has no DICOM context.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from services.config import Settings
from services.errors import PointNotFoundError, ReportError
from services.imaging import max_file_bytes, read_regular_file
from services.imaging.sniff import has_dicm_magic, looks_like_bare_dicom
from services.index import VectorStore
from services.pipeline.ledger import Ledger
from services.pipeline.stored_image import stored_image_path


@dataclass(frozen=True)
class QueryFilm:
    """Where the query's bytes are, its DICOM header (None for PNG/JPEG), the indexed point it was named by (if
    any) and that point's patient hash (so its patient is excluded even when the file carries no patient id), and
    its stored vector with the model that made it (the search starts from it: the film is not encoded again)."""

    path: Path
    header: pydicom.Dataset | None
    point_id: str | None = None
    patient_hash: str | None = None
    vector: np.ndarray | None = field(default=None, repr=False, compare=False)
    vector_model: str | None = None

    @property
    def sop_uid(self) -> str | None:
        return _text(self.header, "SOPInstanceUID")

    @property
    def burned_in(self) -> bool:
        return self.header is not None and burned_in_annotation(self.header)


def resolve_query(query: Path | str, *, settings: Settings, store: VectorStore, ledger: Ledger) -> QueryFilm:
    """A file path, or the UUID of a point of `settings.collection`; ReportError when it is neither."""
    path = Path(query)
    if path.is_file():
        return QueryFilm(path, read_header(path, settings.max_pixels))
    try:
        pid = str(uuid.UUID(str(query)))
    except ValueError:
        raise ReportError(f"{query}: no such file, and not the id of an indexed image") from None
    records = store.retrieve(settings.collection, [pid], with_vectors=True)
    if not records:
        raise PointNotFoundError(f"no point {pid} in collection {settings.collection!r}")
    payload = records[0].payload
    stored = stored_image_path(ledger, payload)
    if not stored.is_file():
        raise ReportError(
            f"the image of point {pid} is no longer kept on this server",
            "Make the report from the film itself: cxr report FILE.",
        )
    header = read_header(stored, settings.max_pixels)
    vector_model = payload.get("model_id")
    return QueryFilm(stored, header, pid, payload.get("patient_hash"), records[0].vector, vector_model)


def read_header(path: Path, max_pixels: int) -> pydicom.Dataset | None:
    """The DICOM header of `path` without its pixels (sniffed by its bytes), or None for a raster file."""
    data = read_regular_file(path, max_file_bytes(max_pixels))
    if not (has_dicm_magic(data[:132]) or looks_like_bare_dicom(data[:132])):
        return None
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise ReportError(f"{path.name}: the DICOM header cannot be read ({exc})") from exc


def burned_in_annotation(header: pydicom.Dataset) -> bool:
    """True when the film says its pixels carry burned-in text (names, ids): such a film is never drawn."""
    return str(header.get("BurnedInAnnotation", "")).strip().upper() == "YES"


def film_burned_in(path: Path, max_pixels: int) -> bool:
    """BurnedInAnnotation of a stored film; a raster file has no such attribute."""
    header = read_header(path, max_pixels)
    return header is not None and burned_in_annotation(header)


def _text(header: pydicom.Dataset | None, keyword: str) -> str | None:
    value = None if header is None else header.get(keyword)
    return str(value).strip() or None if value is not None else None
