"""The one place that turns an image record into a stored payload and a point id.

Payloads are built from an allow-list (PAYLOAD_FIELDS), so no patient name, id, birth date or accession number
can reach the store; the patient is kept only as a salted hash, enough to exclude same-patient hits. Nor does a
file path (export folders are often named after the patient): `source_ref` is an opaque reference that only the
indexing machine resolves (services.pipeline.refs). Ages are top-coded (every age of 90 or over is stored as 90,
with `age_band` "90+"), as HIPAA Safe Harbor asks; services.ages decides it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from services.ages import AGE_BAND, AGE_TOP, age_years
from services.errors import ConfigError

if TYPE_CHECKING:
    from services.imaging import ImageMeta
    from services.manifest import ManifestRow

# Every key a payload may carry. Anything else is dropped, whatever the caller passes.
PAYLOAD_FIELDS: tuple[str, ...] = (
    "label",
    "view",
    "sex",
    "age",  # whole years, top-coded: 90 means "90 or over" (services.ages)
    "age_band",  # "90+" on top-coded ages only, for display
    "modality",
    "body_part",
    "source",
    "origin_dataset",
    "source_ref",
    "study_uid",
    "series_uid",
    "sop_uid",
    "patient_hash",
    "model_id",
    "content_sha256",
    "indexed_at",
)

# Fixed forever: changing it would give every stored image a new id. uuid5(NAMESPACE_DNS, "points.cxr").
POINT_ID_NAMESPACE = uuid.UUID("27eb5008-fd25-5b4f-a350-4b125cb4aac1")

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
# The only shapes a source_ref may take (services.pipeline.refs): an HMAC of a path, or a spooled instance's UID.
_SOURCE_REF_RE = re.compile(r"file:[0-9a-f]{32}|spool:[0-9]+(\.[0-9]+)*")


# A de-identified copy (services/pacs/deid.py) carries PatientID = PSEUDONYM_PREFIX + its patient hash, so the
# hash of the copy equals the hash of the original: same-patient exclusion works across both.
PSEUDONYM_PREFIX = "CXRPH-"
_PSEUDONYM_RE = re.compile(re.escape(PSEUDONYM_PREFIX) + r"([0-9a-f]{32})")


def patient_hash(patient_id: str | None, salt: bytes) -> str | None:
    """HMAC-SHA256 of the patient id under the store's salt, 32 hex characters; None when there is no id.
    A pseudonym made by `patient_pseudonym` gives back the hash it carries."""
    if patient_id is None or not str(patient_id).strip():
        return None
    pseudonym = _PSEUDONYM_RE.fullmatch(str(patient_id).strip())
    if pseudonym:
        return pseudonym.group(1)
    if not salt:
        raise ConfigError("the patient-hash salt is empty; an unsalted hash of a patient id can be reversed")
    digest = hmac.new(salt, str(patient_id).strip().encode("utf-8"), hashlib.sha256)
    return digest.hexdigest()[:32]


def patient_pseudonym(patient_id: str | None, salt: bytes) -> str | None:
    """The PatientID a de-identified copy carries: `CXRPH-<patient_hash>` (None when there is no id)."""
    digest = patient_hash(patient_id, salt)
    return None if digest is None else PSEUDONYM_PREFIX + digest


def point_id(*, sop_uid: str | None, content_sha256: str) -> str:
    """Deterministic point id: from the SOP Instance UID for DICOM (same instance, same point, whatever the
    file bytes), else from the content hash. Re-indexing an image therefore replaces its point."""
    if sop_uid and sop_uid.strip():
        return str(uuid.uuid5(POINT_ID_NAMESPACE, "sop:" + sop_uid.strip()))
    digest = (content_sha256 or "").strip().lower()
    if not _SHA256_RE.fullmatch(digest):
        raise ValueError(f"content_sha256 must be 64 hex characters, got {content_sha256!r}")
    return str(uuid.uuid5(POINT_ID_NAMESPACE, "sha256:" + digest))


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def build_payload(
    *,
    label: str | None,
    source_ref: str | None,
    model_id: str | None,
    salt: bytes,
    meta: ImageMeta | None = None,
    row: ManifestRow | None = None,
    content_sha256: str | None = None,
) -> dict[str, Any]:
    """The payload stored with one image. Manifest values win over DICOM header values (the manifest is
    curated); None values are dropped; only PAYLOAD_FIELDS survive. A `source_ref` of any other shape than
    `file:<32 hex>` or `spool:<UID>` is refused (ValueError), so a path can never slip in."""
    if source_ref is not None and not _SOURCE_REF_RE.fullmatch(source_ref):
        raise ValueError("source_ref must be file:<32 hex> or spool:<UID> (an opaque reference, never a path)")

    def pick(field: str) -> Any:
        from_row = getattr(row, field, None) if row is not None else None
        return from_row if from_row is not None else getattr(meta, field, None)

    raw_patient = pick("patient_id")
    age = age_years(pick("age"))  # top-coded here too, whatever the caller parsed
    candidate: dict[str, Any] = {
        "label": _text(label if label is not None else getattr(row, "label", None)),
        "view": _text(pick("view")),
        "sex": _text(pick("sex")),
        "age": age,
        "age_band": AGE_BAND if age is not None and age >= AGE_TOP else None,
        "modality": _text(pick("modality")),
        "body_part": _text(pick("body_part")),
        "source": _text(pick("source")),
        "origin_dataset": _text(pick("origin_dataset")),
        "source_ref": _text(source_ref),
        "study_uid": _text(pick("study_uid")),
        "series_uid": _text(pick("series_uid")),
        "sop_uid": _text(pick("sop_uid")),
        "patient_hash": patient_hash(_text(raw_patient), salt),
        "model_id": _text(model_id),
        "content_sha256": _text(content_sha256),
        "indexed_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return {key: candidate[key] for key in PAYLOAD_FIELDS if candidate.get(key) is not None}
