"""The corpus itself: every case decodes to the outcome it names, with the sentence fragment that the entry points
reporting only a sentence are checked by; the bombs are tiny files."""

from __future__ import annotations

import pytest

from services.errors import DecodeError
from services.imaging import decode_bytes
from tests.hostile.corpus import Case

INTERNALS = ("Error", "NoneType", "Traceback", "object of type")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # png_over_cap: Pillow warns, we refuse
def test_each_case_decodes_to_its_outcome(corpus: list[Case]) -> None:
    got = {}
    for case in corpus:
        try:
            decode_bytes(case.data, "upload")
            got[case.id] = ("ok", "")
        except DecodeError as err:
            assert case.says in err.reason and not any(word in err.reason for word in INTERNALS), (case.id, err)
            got[case.id] = (err.code, case.says)
    assert got == {c.id: (c.expect, c.says) for c in corpus}
    assert sum(c.good for c in corpus) >= 8 and sum(not c.good for c in corpus) >= 15
    bombs = [c for c in corpus if c.expect == "too_large"]
    assert len(bombs) >= 5 and all(len(c.data) < 64 * 2**10 for c in bombs)  # tiny files that claim 100+ Mpx
