"""One hostile corpus that every entry point is tried against, generated at test time (nothing big is committed).

Each case is a file as it could arrive: its bytes, a name (some carry control characters, some patient details, as
hospital exports do), whether it is DICOM, and the outcome the decoder documents for it: "ok", or a stable reason
code (services.imaging.reasons.DecodeReason) with a fragment of the sentence that goes with it. Good films (real
cxr-public JPEGs, the real RG1 chest CR, a DX around a real JPEG) are mixed in, so every batch holds good and bad.

The builders live in tests/imaging/bad_files.py (one place for each); this module only names and orders them.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom

from services.imaging.reasons import DecodeReason
from tests.imaging import bad_files as bad
from tests.imaging.conftest import dicom_bytes
from tests.pacs.dicom_factory import dx_from_jpeg

OK = "ok"
# The formats POST /v1/search, /v1/index and /v1/render take (told apart by their bytes); anything else is a 415.
API_FORMATS = frozenset({"dicom", "png", "jpeg"})
BOMB_SIDE = 30_000  # 900 Mpx declared: over CXR_MAX_PIXELS (80 Mpx) and Pillow's own hard limit (179 Mpx)
OVER_CAP_SIDE = 10_000  # 100 Mpx: over CXR_MAX_PIXELS, under Pillow's hard limit (Pillow only warns)
PATIENT_NAME = "DOE^JOHN_19600101_MRN12345"


@dataclass(frozen=True)
class Case:
    """One input. `expect` is "ok" or a DecodeReason value; `says` is a fragment of the reason's sentence, for the
    entry points that report only the sentence (the file index, the ledger)."""

    id: str
    data: bytes
    name: str
    fmt: str  # what the bytes are: dicom, png, jpeg, j2k, text, zip, empty
    expect: str
    says: str = ""

    @property
    def dicom(self) -> bool:
        return self.fmt == "dicom"

    @property
    def sop_uid(self) -> str:
        """The SOP Instance UID of a DICOM case (its key in the ledger once received or pulled)."""
        return str(pydicom.dcmread(io.BytesIO(self.data), stop_before_pixels=True).SOPInstanceUID)

    @property
    def good(self) -> bool:
        return self.expect == OK

    @property
    def api_status(self) -> int:
        """What the API answers a single upload of it with (search and render)."""
        if self.fmt not in API_FORMATS:
            return 415
        if self.good:
            return 200
        return 413 if self.expect == DecodeReason.TOO_LARGE else 422


def _public_jpegs(cxr_public: Path, n: int) -> list[Path]:
    """`n` real chest films of cxr-public (grey JPEGs), from four different classes."""
    with (cxr_public / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    picked: dict[str, Path] = {}
    for row in rows:
        picked.setdefault(row["label"], cxr_public / row["path"])
    return sorted(picked.values())[:n]


def build_corpus(cxr_public: Path, dicom_dir: Path) -> list[Case]:
    """Every case, good and bad; names unique, valid on Linux (no `/`, no NUL)."""
    films = _public_jpegs(cxr_public, 4)
    jpegs = [p.read_bytes() for p in films]
    dx = dx_from_jpeg(films[2], 0, seed="cxr-hostile")  # a DX For Presentation around the third film
    r = DecodeReason
    cases = [
        # good films: real ones, and the encodings the decoder documents as supported
        Case("film_jpeg", jpegs[0], f"{PATIENT_NAME}.jpg", "jpeg", OK),
        Case("film_jpeg_ansi", jpegs[1], "\x1b[31mred\x1b[0m film.jpg", "jpeg", OK),
        Case("film_rg1_cr", (dicom_dir / "RG1_UNCR.dcm").read_bytes(), f"{PATIENT_NAME}.dcm", "dicom", OK),
        Case("film_dx_jpeg", dicom_bytes(dx), "Smith, Jane (DOB 1971-02-03)\r\n.dcm", "dicom", OK),
        Case("grey_as_rgb_jpeg", bad.grey_as_rgb_jpeg(jpegs[3]), "grey\tas rgb.jpg", "jpeg", OK),
        Case("grey16_png", bad.grey16_png(), "sixteen\nbit.png", "png", OK),
        Case("grey16_dicom", bad.grey16_dicom(), "sixteen bit.dcm", "dicom", OK),
        Case("j2k_dicom", bad.dicom_j2k(), "j2k lossless.dcm", "dicom", OK),
        # raw JPEG 2000 is read by the file index (services/imaging/raster.py RASTER_FORMATS); the API takes DICOM,
        # PNG and JPEG only
        Case("j2k_raw", bad.j2k(bad.textured()), "raw.j2k", "j2k", OK),
        # decompression bombs: tiny files declaring huge images, refused from the header
        Case("png_bomb", bad.png_claiming(BOMB_SIDE, BOMB_SIDE), "bomb.png", "png", r.TOO_LARGE, "too many pixels"),
        Case("png_over_cap", bad.png_claiming(OVER_CAP_SIDE, OVER_CAP_SIDE), "over\x07cap.png", "png", r.TOO_LARGE,
             "too many pixels"),
        Case("jpeg_bomb", bad.jpeg_claiming(BOMB_SIDE, BOMB_SIDE), "bomb.jpg", "jpeg", r.TOO_LARGE, "too many pixels"),
        Case("j2k_bomb", bad.j2k_claiming(BOMB_SIDE, BOMB_SIDE), "bomb.j2k", "j2k", r.TOO_LARGE, "too many pixels"),
        Case("dicom_j2k_bomb", bad.dicom_j2k_claiming(BOMB_SIDE, BOMB_SIDE), f"{PATIENT_NAME}_bomb.dcm", "dicom",
             r.TOO_LARGE, "too many pixels"),
        Case("dicom_claims_huge", bad.dicom_claiming(BOMB_SIDE), "claims huge.dcm", "dicom", r.TOO_LARGE,
             "too many pixels"),
        # truncated and lying headers
        Case("dicom_8000_over_1kb", bad.claims_8000_with_1kb(), "8000 over 1kb.dcm", "dicom", r.TRUNCATED,
             "truncated"),
        Case("dicom_jpeg_sof_lies", bad.dicom_jpeg_claiming(8000, 8000), "sof lies.dcm", "dicom", r.CORRUPT,
             "compressed data declares 8000x8000"),
        Case("png_ihdr_lies", bad.lying_png(), "ihdr lies.png", "png", r.TRUNCATED, "truncated"),
        Case("png_truncated", bad.truncated_png(), "cut\rshort.png", "png", r.TRUNCATED, "truncated"),
        Case("jpeg_truncated", bad.truncated_jpeg(), "cut short.jpg", "jpeg", r.TRUNCATED, "truncated"),
        Case("dicom_truncated", bad.truncated_dicom(), "cut short.dcm", "dicom", r.TRUNCATED, "truncated"),
        Case("dicom_bits_allocated_16_over_8", bad.wrong_bits_allocated(), "bits.dcm", "dicom", r.TRUNCATED,
             "pixel data where the header"),
        # what the decoder refuses by design
        Case("colour_png", bad.colour_png(), "colour.png", "png", r.UNSUPPORTED_IMAGE, "colour image"),
        Case("colour_jpeg", bad.colour_jpeg(), "colour photo.jpg", "jpeg", r.UNSUPPORTED_IMAGE, "colour image"),
        Case("dicom_multiframe", bad.multiframe_dicom(), "three frames.dcm", "dicom", r.UNSUPPORTED_IMAGE,
             "multi-frame"),
        Case("text", b"patient: DOE^JOHN\nMRN: 12345\n", "notes.dcm", "text", r.NOT_AN_IMAGE, "text file"),
        Case("zip", bad.zip_archive(), f"{PATIENT_NAME}.zip", "zip", r.NOT_AN_IMAGE, "zip archive"),
        Case("empty", b"", "empty.png", "empty", r.NOT_AN_IMAGE, "empty file"),
    ]  # fmt: skip
    assert len({c.id for c in cases}) == len(cases) and len({c.name for c in cases}) == len(cases)
    assert not any("/" in c.name or "\0" in c.name for c in cases)
    return cases


def write_corpus(cases: list[Case], folder: Path) -> dict[Path, Case]:
    """Each case as a file in `folder` under its name; path -> case."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for case in cases:
        path = folder / case.name
        path.write_bytes(case.data)
        out[path] = case
    return out


def expected_outcomes(cases: list[Case]) -> dict[str, tuple]:
    """Per case, what a ledger item of it must say after the workers: indexed, or failed at decode with its reason."""
    return {c.id: ("indexed",) if c.good else ("failed", "decode", c.says) for c in cases}


def ledger_outcomes(cases: list[Case], items: dict[str, Any]) -> dict[str, tuple]:
    """Per case, what its ledger item says (its reason shortened to the case's expected words when it has them)."""
    got: dict[str, tuple] = {}
    for case in cases:
        item = items[case.id]
        if item is None or item.state == "indexed":
            got[case.id] = (item.state,) if item else ("missing",)
        else:
            got[case.id] = (item.state, item.stage, case.says if case.says in (item.reason or "") else item.reason)
    return got
