"""SearchFilter normalises what callers (often the CLI) pass, and refuses what could never match."""

from __future__ import annotations

import uuid

import pytest

from services.errors import StoreError
from services.index import SearchFilter


def test_bare_values_and_integer_fields_are_normalised() -> None:
    pid = uuid.uuid4()
    flt = SearchFilter(must={"label": "covid", "age": ["45", 46]}, exclude_ids=str(pid).upper())
    assert flt.must == {"label": ("covid",), "age": (45, 46)}
    assert flt.exclude_ids == (str(pid),)
    assert not flt.is_empty and SearchFilter().is_empty
    assert SearchFilter(must_not={"patient_hash": []}).is_empty  # excluding nothing is no filter


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"must": {"label": []}}, "no allowed values"),
        ({"must": {"age": ["forty"]}}, "not an integer"),
        ({"must": {"label": ["a", 1]}}, "mixes strings and integers"),
        ({"must": {"view": [True]}}, "not a string or an integer"),
        ({"must_not": {"label": [1.5]}}, "not a string or an integer"),
        ({"exclude_ids": ["image-7"]}, "not a UUID"),
    ],
)
def test_refuses_filters_that_cannot_work(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(StoreError, match=message):
        SearchFilter(**kwargs)  # type: ignore[arg-type]
