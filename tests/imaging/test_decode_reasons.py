"""Every refused decode carries a stable reason code, and its sentence never shows Python internals; the decode
memory budget estimates a file's cost from its header and lets no more than its capacity decode at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from services.errors import DecodeBusyError, DecodeError, ImageTooLargeError
from services.imaging import decode_bytes
from services.imaging.budget import RASTER_GREY_BPP, DecodeBudget, DecodeCost, estimate_cost
from services.imaging.reasons import DecodeReason

from .bad_files import (
    claims_8000_with_1kb,
    colour_png,
    corrupt_png,
    dicom_j2k_claiming,
    dicom_jpeg_claiming,
    dicom_too_many_pixels,
    empty_pixel_data,
    mpeg2,
    png,
    text_report,
    truncated_dicom,
    truncated_png,
)
from .conftest import dicom_bytes, gradient, make_dataset

INTERNALS = ("Error", "NoneType", "len()", "Traceback", "object of type")


CASES: list[tuple[str, Callable[[], bytes], DecodeReason, str]] = [
    ("dicom claims 8000x8000 over 1 KB", claims_8000_with_1kb, DecodeReason.TRUNCATED, "truncated"),
    ("dicom with an empty Pixel Data", empty_pixel_data, DecodeReason.NO_PIXEL_DATA, "no pixel data"),
    ("dicom text report", text_report, DecodeReason.NO_PIXEL_DATA, "Basic Text SR Storage is not an image"),
    ("dicom mpeg2", mpeg2, DecodeReason.UNSUPPORTED_TRANSFER_SYNTAX, "unsupported transfer syntax MPEG2"),
    ("dicom 20000x20000", dicom_too_many_pixels, DecodeReason.TOO_LARGE, "too many pixels"),
    ("dicom j2k frame claims 30000x30000", lambda: dicom_j2k_claiming(30_000, 30_000), DecodeReason.TOO_LARGE,
     "the compressed data declares 30000x30000"),
    ("dicom jpeg frame larger than its header", lambda: dicom_jpeg_claiming(8000, 8000), DecodeReason.CORRUPT,
     "declares 8000x8000 pixels where the header says 256x256"),
    ("dicom cut short", truncated_dicom, DecodeReason.TRUNCATED, "truncated"),
    ("png cut in half", truncated_png, DecodeReason.TRUNCATED, "truncated"),
    ("png with garbage in its data", corrupt_png, DecodeReason.CORRUPT, "corrupt"),
    ("text file", lambda: b"patient: 123\nfinding: none\n", DecodeReason.NOT_AN_IMAGE, "not an image"),
    ("zip archive", lambda: b"PK\x03\x04" + bytes(100), DecodeReason.NOT_AN_IMAGE, "zip archive"),
    ("empty file", lambda: b"", DecodeReason.NOT_AN_IMAGE, "empty file"),
    ("colour png", colour_png, DecodeReason.UNSUPPORTED_IMAGE, "colour image"),
    ("blank png", lambda: png(np.full((64, 64), 7, np.uint8)), DecodeReason.BLANK, "blank image"),
    ("tiny png", lambda: png(gradient(16, 16).astype(np.uint8)), DecodeReason.TOO_SMALL, "too small"),
]  # fmt: skip


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the files broken on purpose
@pytest.mark.parametrize(("what", "make", "code", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_every_refusal_has_a_stable_code_and_a_clean_sentence(
    what: str, make: Callable[[], bytes], code: DecodeReason, fragment: str
) -> None:
    with pytest.raises(DecodeError) as info:
        decode_bytes(make(), "upload")
    err = info.value
    assert err.code == code, (what, err.code, err.reason, err.detail)
    assert fragment in err.reason
    assert not any(word in err.reason for word in INTERNALS), err.reason
    assert err.path == "upload"


def test_a_png_over_the_pixel_limit_is_too_large() -> None:
    with pytest.raises(ImageTooLargeError) as info:
        decode_bytes(png(gradient(300, 300).astype(np.uint8)), "upload", max_pixels=10_000)
    assert info.value.code == DecodeReason.TOO_LARGE and "too many pixels" in info.value.reason


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_decoders_own_text_is_kept_for_the_log() -> None:
    with pytest.raises(DecodeError) as info:
        decode_bytes(corrupt_png(), "upload")
    assert info.value.detail and "Error" in info.value.detail  # e.g. "OSError: broken data stream ..."
    assert info.value.detail in str(info.value)  # the CLI and the server log show it


def test_cost_is_estimated_from_the_header_without_decoding() -> None:
    side = 2000
    data = png(np.tile(np.arange(side, dtype=np.uint16) % 256, (side, 1)).astype(np.uint8))
    cost = estimate_cost(data)
    assert cost.pixels == side * side
    assert cost.bytes == side * side * RASTER_GREY_BPP + 2 * len(data)
    ds = make_dataset(gradient(300, 400))
    assert estimate_cost(dicom_bytes(ds)).pixels == 300 * 400
    assert estimate_cost(b"not an image at all").pixels == 0  # the decoder refuses it, at the cost of the file
    # 8000 x 8000 claimed over 1 KB of uncompressed pixels: refused as truncated from the header, so not "too large"
    lying = claims_8000_with_1kb()
    assert estimate_cost(lying) == DecodeCost(pixels=0, bytes=2 * len(lying))


def test_budget_admits_up_to_its_capacity_then_waits_then_refuses() -> None:
    budget = DecodeBudget(capacity_bytes=1000, wait_s=0.3)
    big = DecodeCost(pixels=10, bytes=600)
    with pytest.raises(ImageTooLargeError) as info, budget.reserve(DecodeCost(pixels=100, bytes=1001)):
        pass
    assert info.value.code == "too_large" and "decode memory budget" in info.value.reason

    release = threading.Event()
    held = threading.Event()

    def hold() -> None:
        with budget.reserve(big):
            held.set()
            release.wait(5)

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(5) and budget.used == 600
    with budget.reserve(DecodeCost(pixels=1, bytes=400)):  # fits beside it
        assert budget.used == 1000
    t0 = time.monotonic()
    with pytest.raises(DecodeBusyError) as busy, budget.reserve(big):
        pass
    assert 0.25 <= time.monotonic() - t0 < 2.0  # waited about wait_s, then gave up
    assert busy.value.retry_after_s == 1 and "busy" in busy.value.message

    threading.Timer(0.1, release.set).start()  # freed while the next one waits: it gets in
    with budget.reserve(big):
        assert budget.used == 600
    thread.join(5)
    assert budget.used == 0
