"""Parse user filter expressions (`label=covid19`, `view=PA,AP`, `label!=normal`) into a SearchFilter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from services.ages import filter_age
from services.errors import CxrError
from services.index import INDEXED_FIELDS, SearchFilter


class FilterSyntaxError(CxrError):
    default_hint = "Write filters as FIELD=VALUE, FIELD=V1,V2 (any of) or FIELD!=VALUE."


class UnknownValueError(FilterSyntaxError):
    """A filter value that no film in the collection carries (422, reason `unknown_value`)."""

    code = "unknown_value"
    default_hint = "Pick one of the values the collection holds (GET /v1/facets, or `cxr collections`)."


def split_filter(expr: str) -> tuple[str, str, list[str]]:
    """(field, "=" or "!=", values) of one expression; FilterSyntaxError when it is not one."""
    negate = "!=" in expr
    field, sep, values = expr.partition("!=" if negate else "=")
    field = field.strip()
    if not sep or not field or not values.strip():
        raise FilterSyntaxError(f"cannot parse filter {expr!r}")
    return field, "!=" if negate else "=", [v.strip() for v in values.split(",") if v.strip()]


_PLURAL = {"sex": "sexes"}


def resolve_filters(expressions: Sequence[str], known: Mapping[str, Mapping[str, int]]) -> tuple[str, ...]:
    """The expressions with each value of a field in `known` (field -> stored value -> count, e.g. from
    services.pipeline.facets) spelt as stored: matching ignores case, so `label=Covid19` finds `covid19`.
    A value no film carries is an UnknownValueError that lists the values there are, never an empty result."""
    out = []
    for expr in expressions:
        field, op, values = split_filter(expr)
        stored = known.get(field)
        if stored is None:
            out.append(expr)
            continue
        folded: dict[str, str] = {}
        for value in sorted(stored, key=lambda v: -stored[v]):  # the commonest spelling wins a case-only clash
            folded.setdefault(value.casefold(), value)
        resolved = []
        for value in values:
            match = value if value in stored else folded.get(value.casefold())
            if match is None:
                listing = ", ".join(f"{v} ({c})" for v, c in sorted(stored.items(), key=lambda kv: (-kv[1], kv[0])))
                raise UnknownValueError(
                    f"no film has {field} {value!r}; {_PLURAL.get(field, field + 's')} here: {listing or 'none'}"
                )
            resolved.append(match)
        out.append(f"{field}{op}{','.join(resolved)}")
    return tuple(out)


def age_filtered(expressions: Sequence[str]) -> bool:
    """True when an expression keeps only some ages (`age=...`), which drops every film without an age."""
    return any(split_filter(expr)[:2] == ("age", "=") for expr in expressions)


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
        field, op, values = split_filter(expr)
        if field not in INDEXED_FIELDS:
            raise FilterSyntaxError(
                f"unknown filter field {field!r}", f"Filterable fields: {', '.join(sorted(INDEXED_FIELDS))}."
            )
        target = must_not if op == "!=" else must
        target.setdefault(field, []).extend(_coerce(field, v) for v in values)
    if exclude_patient:
        must_not.setdefault("patient_hash", []).append(exclude_patient)
    if not (must or must_not or exclude_ids):
        return None
    return SearchFilter(must=must, must_not=must_not, exclude_ids=tuple(exclude_ids))
