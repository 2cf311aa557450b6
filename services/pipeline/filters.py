"""Parse user filter expressions (`label=covid19`, `view=PA,AP`, `label!=normal`) into a SearchFilter."""

from __future__ import annotations

from collections.abc import Sequence

from services.ages import filter_age
from services.errors import CxrError
from services.index import INDEXED_FIELDS, SearchFilter


class FilterSyntaxError(CxrError):
    default_hint = "Write filters as FIELD=VALUE, FIELD=V1,V2 (any of) or FIELD!=VALUE."


def _coerce(field: str, raw: str) -> str | int:
    if INDEXED_FIELDS.get(field) != "integer":
        return raw
    try:
        return filter_age(raw) if field == "age" else int(raw)  # age also takes the top band, "90+"
    except ValueError:
        raise FilterSyntaxError(f"filter field {field!r} takes integers, got {raw!r}") from None


def parse_filters(
    expressions: Sequence[str], *, exclude_ids: Sequence[str] = (), exclude_patient: str | None = None
) -> SearchFilter | None:
    """Build one SearchFilter: several expressions AND together, comma-separated values are any-of."""
    must: dict[str, list[str | int]] = {}
    must_not: dict[str, list[str | int]] = {}
    for expr in expressions:
        negate = "!=" in expr
        field, sep, values = expr.partition("!=" if negate else "=")
        field = field.strip()
        if not sep or not field or not values.strip():
            raise FilterSyntaxError(f"cannot parse filter {expr!r}")
        if field not in INDEXED_FIELDS:
            raise FilterSyntaxError(
                f"unknown filter field {field!r}", f"Filterable fields: {', '.join(sorted(INDEXED_FIELDS))}."
            )
        target = must_not if negate else must
        target.setdefault(field, []).extend(_coerce(field, v.strip()) for v in values.split(",") if v.strip())
    if exclude_patient:
        must_not.setdefault("patient_hash", []).append(exclude_patient)
    if not (must or must_not or exclude_ids):
        return None
    return SearchFilter(must=must, must_not=must_not, exclude_ids=tuple(exclude_ids))
