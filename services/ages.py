"""The one place that decides how a patient's age is kept: whole years, with every age of 90 or over as one band.

HIPAA Safe Harbor (45 CFR 164.514(b)(2)(i)(C)) lets ages through only when all ages over 89 are aggregated into a
single category. cxr keeps ages as integers, so the search filters still work, top-coded: `age` 90 means "90 or
over" (`AGE_BAND` "90+" where an age is shown). Every reader of an age (DICOM PatientAge, manifest rows, payloads,
the search filter, the API and the de-identified spool copy) goes through this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

AGE_TOP = 90  # ages from here up are one band
AGE_BAND = f"{AGE_TOP}+"
MAX_AGE = 130  # a larger age is an error in the source, not a person: dropped (None)

# DICOM AS: three digits and a unit (D, W, M, Y); a bare number is read as years.
_DICOM_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_DAYS_PER_UNIT = {"D": 1, "W": 7, "M": 30.4375, "Y": 365.25}


def top_code(years: int | None) -> int | None:
    """`years` with every age of AGE_TOP or over as AGE_TOP; None for a negative or implausible age."""
    if years is None or years < 0 or years > MAX_AGE:
        return None
    return min(years, AGE_TOP)


def age_years(value: Any) -> int | None:
    """Whole years, top-coded, from an int, a float or a DICOM age string ("045Y" -> 45, "006M" -> 0,
    "097Y" -> 90); None when absent or unreadable."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return top_code(int(value)) if value == value else None  # NaN is not an age
    match = _DICOM_AGE.match(str(value))
    if match is None:
        return None
    count, unit = int(match.group(1)), (match.group(2) or "Y").upper()
    years = int(count * _DAYS_PER_UNIT[unit] // _DAYS_PER_UNIT["Y"]) if unit != "Y" else count
    return top_code(years)


def age_band(years: int | None) -> str | None:
    """How an age is shown: "45", or "90+" for the top band; None when there is no age."""
    years = top_code(years)
    if years is None:
        return None
    return AGE_BAND if years >= AGE_TOP else str(years)


def dicom_age(value: str | None) -> str | None:
    """A PatientAge value safe to keep in a DICOM copy: "097Y" -> "090Y"; ages under 90 unchanged (so "006M"
    stays months); None when unreadable (the attribute is then emptied)."""
    years = age_years(value)
    if years is None:
        return None
    return f"{AGE_TOP:03d}Y" if years >= AGE_TOP else str(value).strip().upper()


def filter_age(raw: str | int) -> int:
    """One age a search filter names: an integer, or the band "90+"; ValueError otherwise."""
    if isinstance(raw, str) and raw.strip() == AGE_BAND:
        return AGE_TOP
    if isinstance(raw, bool):
        raise ValueError(f"{raw!r} is not an age")
    return int(raw)


def age_filter_values(values: Iterable[int]) -> tuple[int, ...]:
    """The stored values a filter on these ages must match. Any age of 90 or over means the whole band, so it
    matches 90 and also every exact age up to MAX_AGE (points indexed before ages were top-coded)."""
    out: list[int] = []
    for v in values:
        for stored in range(AGE_TOP, MAX_AGE + 1) if v >= AGE_TOP else (v,):
            if stored not in out:
                out.append(stored)
    return tuple(out)


def public_age_fields(payload: dict[str, Any]) -> dict[str, Any]:
    """A payload as it may be shown: `age` top-coded and `age_band` set for the top band, whatever was stored."""
    if "age" not in payload:
        return payload
    out = dict(payload)
    years = age_years(out["age"])
    if years is None:
        out.pop("age")
        out.pop("age_band", None)
    else:
        out["age"] = years
        if years >= AGE_TOP:
            out["age_band"] = AGE_BAND
        else:
            out.pop("age_band", None)
    return out
