"""What cxr accepts from a modality or a PACS, and the DIMSE status it answers for everything else.

The acceptance rule (also in the README, "PACS integration"):

1. The SOP class is one of ACCEPTED_SOP_CLASSES: CR Image Storage, Digital X-Ray Image Storage (for presentation
   and for processing) or Secondary Capture Image Storage. Other classes (CT, MR, mammography, intra-oral, ...)
   are not even negotiated, so a sender gets "no accepted presentation context" for them.
2. The data set's own SOPClassUID matches the one it was sent as (else 0xA900).
3. Modality, when present, is CR or DX (Secondary Capture: CR, DX or OT).
4. BodyPartExamined, when present and not empty, is CHEST or THORAX (case and spaces ignored). Chest rooms often
   leave it empty, so an empty or absent value is accepted for CR and DX; a Secondary Capture must name CHEST or
   THORAX explicitly, because an SC can be a screenshot of anything.

Reports are never indexed, whether cxr's own (services.reports) or another system's: Encapsulated PDF and other
encapsulated documents, every SR storage class, Key Object Selection and presentation states are negotiated (so a
PACS that routes a whole study here gets an answer per instance, not a failed association) and refused by rule 1
with a reason that names them (`NON_IMAGE_KINDS`).

A refused instance gets 0xA901 with an ErrorComment naming the rule (no PHI): it is not a chest radiograph, so it is
never spooled or indexed, and a sender should not retry it.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
ACCEPTED_SOP_CLASSES: tuple[str, ...] = (CR_IMAGE_STORAGE, DX_FOR_PRESENTATION, DX_FOR_PROCESSING, SECONDARY_CAPTURE)

# SOP class UID prefixes of objects that are not images (PS3.4 Annex B), and what the refusal calls them.
NON_IMAGE_KINDS: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.104.": "an encapsulated document (PDF, CDA, ...), a report",
    "1.2.840.10008.5.1.4.1.1.88.": "a Structured Report or Key Object Selection, a report",
    "1.2.840.10008.5.1.4.1.1.11.": "a presentation state",
    "1.2.840.10008.5.1.4.1.1.9.": "a waveform",
}


NON_IMAGE_MODALITIES = frozenset({"SR", "DOC", "KO", "PR"})  # the series of such objects (a pull skips them)


def non_image_kind(sop_class: str) -> str | None:
    """What a non-image SOP class is (a report, a presentation state, ...); None for any other class."""
    return next((kind for prefix, kind in NON_IMAGE_KINDS.items() if sop_class.startswith(prefix)), None)


CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX"})
_MODALITIES = {
    CR_IMAGE_STORAGE: frozenset({"CR", "DX"}),
    DX_FOR_PRESENTATION: frozenset({"CR", "DX"}),
    DX_FOR_PROCESSING: frozenset({"CR", "DX"}),
    SECONDARY_CAPTURE: frozenset({"CR", "DX", "OT"}),
}

# C-STORE response statuses (PS3.4 Annex B.2.3). Success only once the instance is durable.
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # the spool is below its free-space watermark or cannot be written
LEDGER_UNAVAILABLE = 0xA701  # the bytes are durable but the ledger could not record them: the sender retries
SOP_CLASS_MISMATCH = 0xA900  # data set does not match the SOP class it was sent as
NOT_A_CHEST_RADIOGRAPH = 0xA901  # refused by the acceptance rule above
CANNOT_UNDERSTAND = 0xC000  # the data set cannot be parsed
BAD_SOP_INSTANCE_UID = 0xC001  # missing or malformed SOP Instance UID
CANNOT_DEIDENTIFY = 0xC002  # de-identification is on and this instance cannot be cleaned (burned-in text)
# The SOP Instance UID is already in the spool with other pixels or another patient (services/pacs/uid_conflict.py).
# A Cxxx "cannot understand" failure, not A7xx "out of resources": A7xx tells a sender to try again later, and no
# retry can make two images one; senders report Cxxx to their operator and stop resending, which is what is needed.
UID_CONFLICT = 0xC003
# The patient, study or instance was erased on request (`cxr forget`, services.governance.tombstones): refused the
# same way, so the sender stops (unless CXR_FORGET_RESEND=skip, which answers success and keeps nothing).
FORGOTTEN = 0xC004

# Statuses after which resending the same bytes cannot help (the puller records these, never retries them).
PERMANENT = frozenset(
    {SOP_CLASS_MISMATCH, NOT_A_CHEST_RADIOGRAPH, CANNOT_UNDERSTAND, BAD_SOP_INSTANCE_UID, UID_CONFLICT, FORGOTTEN}
)


def _norm(value: object) -> str:
    return "" if value is None else str(value).strip().upper().replace(" ", "")


def refusal(ds: Dataset, *, sent_as: str | None = None) -> tuple[int, str] | None:
    """Why this data set is not accepted, as (status, PHI-free reason); None when it is a chest radiograph."""
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    if sent_as and sop_class and sop_class != sent_as:
        return SOP_CLASS_MISMATCH, f"data set says SOP class {sop_class} but was sent as {sent_as}"
    sop_class = sop_class or (sent_as or "")
    kind = non_image_kind(sop_class)
    if kind is not None:
        return NOT_A_CHEST_RADIOGRAPH, f"SOP class {sop_class} is {kind}: never indexed"
    if sop_class not in _MODALITIES:
        return NOT_A_CHEST_RADIOGRAPH, f"SOP class {sop_class or '(none)'} is not CR, DX or Secondary Capture"
    modality = _norm(ds.get("Modality"))
    if modality and modality not in _MODALITIES[sop_class]:
        return NOT_A_CHEST_RADIOGRAPH, f"modality {modality} is not a radiograph"
    body_part = _norm(ds.get("BodyPartExamined"))
    if body_part and body_part not in CHEST_BODY_PARTS:
        return NOT_A_CHEST_RADIOGRAPH, f"BodyPartExamined {body_part[:16]} is not CHEST or THORAX"
    if sop_class == SECONDARY_CAPTURE and not body_part:
        return NOT_A_CHEST_RADIOGRAPH, "a Secondary Capture must say BodyPartExamined CHEST or THORAX"
    return None


def series_refusal(modality: str | None, body_part: str | None) -> str | None:
    """The same rule on a QIDO/C-FIND series record (before anything is fetched); None when it may hold chest
    radiographs. The instance is checked again with `refusal` once fetched."""
    mod, part = _norm(modality), _norm(body_part)
    if mod in NON_IMAGE_MODALITIES:
        return f"modality {mod} is a report or other non-image series: never indexed"
    if mod and mod not in {"CR", "DX", "OT"}:
        return f"modality {mod} is not a radiograph"
    if part and part not in CHEST_BODY_PARTS:
        return f"BodyPartExamined {part[:16]} is not CHEST or THORAX"
    return None
