"""A deflated DICOM data set is inflated whole by pydicom before any check: a 160 KB file inflating to 160 MB is
refused as too large without being inflated by the decoder and the receiver's intake, and the API's decode budget
is charged its inflated size."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from services.errors import DecodeError
from services.imaging import decode_bytes
from services.imaging.budget import estimate_cost
from services.imaging.deflate import inflates_past
from services.pacs.acceptance import CANNOT_UNDERSTAND
from services.pacs.intake import Intake
from services.pacs.spool import Spool
from services.pipeline.ledger import Ledger
from tests.imaging.bad_files import deflated_bomb


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_deflate_bomb_is_refused_everywhere_without_being_inflated(tmp_path: Path) -> None:
    bomb = deflated_bomb(160)
    assert len(bomb) < 1 << 20
    before = _peak_mb()
    assert inflates_past(bomb, 64 * 2**20) and not inflates_past(bomb, 200 * 2**20)
    with pytest.raises(DecodeError) as refused:
        decode_bytes(bomb, "bomb.dcm", max_pixels=1_000_000, min_side=32)  # files up to 72 MB
    assert refused.value.code == "too_large" and "inflates to more than" in refused.value.reason
    # the API's estimate counts the inflated size (in chunks, never held): the decode budget reserves for it
    assert 160 * 2**20 <= estimate_cost(bomb).bytes < 170 * 2**20
    intake = Intake(Spool(tmp_path / "spool", min_free_mb=0), Ledger(tmp_path / "ledger.sqlite3"), collection="c")
    outcome = intake.accept(bomb, origin="receiver")
    assert outcome.status == CANNOT_UNDERSTAND and not list((tmp_path / "spool").glob("*.dcm"))
    assert _peak_mb() - before < 100  # 160 MB were never held


def test_a_small_deflated_file_decodes(tmp_path: Path) -> None:
    small = deflated_bomb(1)
    assert not inflates_past(small, 64 * 2**20)
    assert decode_bytes(small, "small.dcm", max_pixels=1_000_000, min_side=32).pixels.shape == (64, 64)
