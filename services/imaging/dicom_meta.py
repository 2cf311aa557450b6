"""ImageMeta from a DICOM header. Optional fields never fail a decode: a malformed value becomes None."""

from __future__ import annotations

from pydicom.dataset import Dataset

from services.ages import age_years
from services.imaging.types import ImageMeta

_SEXES = {"M", "F", "O"}


def text_attr(ds: Dataset, keyword: str) -> str | None:
    """An attribute as stripped text, or None when absent, empty or unreadable."""
    try:
        value = ds.get(keyword)
    except Exception:  # pydicom converts lazily; a malformed value raises on access
        return None
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def int_attr(ds: Dataset, keyword: str) -> int | None:
    """An integer attribute, or None when absent or malformed."""
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except Exception:
        return None


def parse_age(value: str | None) -> int | None:
    """Whole years from a DICOM age string, top-coded (services.ages): "045Y" -> 45, "006M" -> 0, "097Y" -> 90
    (90 or over), "abc" -> None."""
    return age_years(value)


def parse_sex(value: str | None) -> str | None:
    """M, F or O; anything else (empty, free text) is None."""
    sex = (value or "").upper()
    return sex if sex in _SEXES else None


def read_meta(ds: Dataset, height: int, width: int, transfer_syntax: str | None) -> ImageMeta:
    """Collect the header fields cxr uses; `height`/`width` are the image's own (Rows, Columns), also when the
    pixels were decoded at a reduced size."""
    return ImageMeta(
        format="dicom",
        height=height,
        width=width,
        bits_stored=int_attr(ds, "BitsStored"),
        photometric=text_attr(ds, "PhotometricInterpretation"),
        transfer_syntax=transfer_syntax,
        modality=text_attr(ds, "Modality"),
        body_part=text_attr(ds, "BodyPartExamined"),
        view=text_attr(ds, "ViewPosition"),
        sex=parse_sex(text_attr(ds, "PatientSex")),
        age=parse_age(text_attr(ds, "PatientAge")),
        patient_id=text_attr(ds, "PatientID"),
        study_uid=text_attr(ds, "StudyInstanceUID"),
        series_uid=text_attr(ds, "SeriesInstanceUID"),
        sop_uid=text_attr(ds, "SOPInstanceUID"),
    )
