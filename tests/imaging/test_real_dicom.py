"""Real DICOM files from pydicom and pydicom-data: a table of files and what must come out of each."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from services.errors import DecodeError
from services.imaging import DecodedImage, decode_image

from .conftest import read_raw

# name, decoded (height, width) or the refusal's reason fragment
TABLE: list[tuple[str, tuple[int, int] | str]] = [
    ("RG1_UNCR.dcm", (1955, 1841)),  # chest CR, MONOCHROME1, 15-bit, window 15000/30000
    ("RG1_J2KR.dcm", (1955, 1841)),  # JPEG 2000 lossless
    ("RG1_J2KI.dcm", (1955, 1841)),  # JPEG 2000 lossy
    ("RG3_UNCR.dcm", (1760, 1760)),  # tibia CR, MONOCHROME1, 10-bit
    ("MR_small.dcm", (64, 64)),  # signed 16-bit with a window
    ("MR_small_bigendian.dcm", (64, 64)),
    ("MR_small_implicit.dcm", (64, 64)),
    ("MR_small_RLE.dcm", (64, 64)),
    ("MR_small_jpeg_ls_lossless.dcm", (64, 64)),  # JPEG-LS, decoded by pylibjpeg-libjpeg
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", (768, 1024)),  # JPEG lossless SV1
    ("JPGExtended.dcm", (1024, 256)),  # JPEG extended 12-bit
    ("JPEG2000.dcm", (1024, 256)),
    ("image_dfl.dcm", (512, 512)),  # deflated explicit VR
    ("vlut_04.dcm", (512, 512)),  # VOI LUT sequence
    ("mlut_18.dcm", (512, 512)),  # modality LUT sequence
    ("693_UNCR.dcm", (512, 512)),
    ("693_J2KR.dcm", (512, 512)),
    ("SC_rgb.dcm", "colour image"),
    ("SC_rgb_jpeg_dcmtk.dcm", "colour image"),
    ("US1_J2KR.dcm", "colour image"),
    ("OBXXXX1A.dcm", "palette colour"),
    ("OBXXXX1A_2frame.dcm", "multi-frame"),
    ("emri_small.dcm", "multi-frame"),
    ("color3d_jpeg_baseline.dcm", "multi-frame"),
    ("rtplan.dcm", "no pixel data: RT Plan Storage is not an image"),
    ("DICOMDIR", "no pixel data"),
    ("emri_small_jpeg_2k_lossless_too_short.dcm", "truncated"),
    ("JPEGLSNearLossless_16.dcm", "too small"),
]

# Files holding the same stored values: each must decode to exactly the same floats as the first.
LOSSLESS_GROUPS = [
    ("RG1_UNCR.dcm", "RG1_J2KR.dcm"),
    ("RG1_UNCI.dcm", "RG1_J2KI.dcm"),  # UNCI is the lossy J2KI's pixels stored uncompressed
    ("MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm"),
    ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm"),
    ("693_UNCR.dcm", "693_J2KR.dcm"),
]


@pytest.mark.filterwarnings("ignore:End of file reached")  # the truncated file
@pytest.mark.parametrize(("name", "expected"), TABLE, ids=[row[0] for row in TABLE])
def test_table(name: str, expected: tuple[int, int] | str, decoded: Callable[[str], DecodedImage], testdata) -> None:
    if isinstance(expected, str):
        with pytest.raises(DecodeError) as info:
            decode_image(testdata(name))
        assert expected in info.value.reason
        assert info.value.path == str(testdata(name))
        return
    image = decoded(name)
    assert image.pixels.shape == expected
    assert image.pixels.dtype == np.float32
    assert image.pixels.flags.c_contiguous
    assert 0.0 <= image.pixels.min() < image.pixels.max() <= 1.0
    assert (image.meta.height, image.meta.width) == expected
    assert image.meta.format == "dicom"


@pytest.mark.parametrize("group", LOSSLESS_GROUPS, ids=lambda g: "=".join(g))
def test_lossless_encodings_decode_identically(group: tuple[str, ...], decoded) -> None:
    first = decoded(group[0]).pixels
    for other in group[1:]:
        np.testing.assert_array_equal(decoded(other).pixels, first, err_msg=other)


def test_rg1_stored_values_identical_before_scaling(dicom_dir: Path) -> None:
    np.testing.assert_array_equal(read_raw(dicom_dir / "RG1_J2KR.dcm"), read_raw(dicom_dir / "RG1_UNCR.dcm"))


def test_rg1_lossy_close_to_lossless(decoded) -> None:
    lossless, lossy = decoded("RG1_UNCR.dcm").pixels, decoded("RG1_J2KI.dcm").pixels
    assert not np.array_equal(lossless, lossy)
    assert np.abs(lossless - lossy).mean() < 0.02


def _region(pixels: np.ndarray, rows: tuple[float, float], cols: tuple[float, float]) -> float:
    h, w = pixels.shape
    return float(pixels[int(rows[0] * h) : int(rows[1] * h), int(cols[0] * w) : int(cols[1] * w)].mean())


def test_rg1_monochrome1_inverted_so_lungs_are_dark(decoded) -> None:
    # Regions read off the decoded film: upper lung fields either side, the mediastinum and spine between.
    pixels = decoded("RG1_UNCR.dcm").pixels
    right_lung = _region(pixels, (0.15, 0.32), (0.20, 0.35))
    left_lung = _region(pixels, (0.15, 0.32), (0.62, 0.78))
    mediastinum = _region(pixels, (0.25, 0.60), (0.45, 0.53))
    assert mediastinum > 0.8
    assert max(right_lung, left_lung) < mediastinum - 0.2


def test_rg1_window_honoured(decoded, dicom_dir: Path) -> None:
    # Window 15000/30000 spans stored 0..30000, so pixels map to 1 - value/30000, not the data's min..max.
    raw = read_raw(dicom_dir / "RG1_UNCR.dcm").astype(np.float64)
    pixels = decoded("RG1_UNCR.dcm").pixels
    expected = 1.0 - ((raw - 14999.5) / 29999 + 0.5)
    np.testing.assert_allclose(pixels, np.clip(expected, 0, 1), atol=1e-6)
    assert pixels.min() > 0.05  # the data never reaches the window's ends


def test_rg1_metadata(decoded) -> None:
    meta = decoded("RG1_UNCR.dcm").meta
    assert meta.format == "dicom"
    assert (meta.height, meta.width) == (1955, 1841)
    assert meta.bits_stored == 15
    assert meta.photometric == "MONOCHROME1"
    assert meta.transfer_syntax == "1.2.840.10008.1.2.1"
    assert meta.modality == "CR"
    assert meta.body_part == "CHEST"
    assert meta.view == "PA"
    assert meta.sex == "F"
    assert meta.age is None
    assert meta.patient_id == "9RG1"
    assert meta.study_uid == "1.3.6.1.4.1.5962.1.2.9.20040826185059.5457"
    assert meta.series_uid == "1.3.6.1.4.1.5962.1.3.9.1.20040826185059.5457"
    assert meta.sop_uid == "1.3.6.1.4.1.5962.1.1.9.1.1.20040826185059.5457"
    assert decoded("RG1_J2KR.dcm").meta.transfer_syntax == "1.2.840.10008.1.2.4.90"


def test_rg3_tibia(decoded) -> None:
    image = decoded("RG3_UNCR.dcm")
    assert image.meta.body_part == "EXTREMITY"
    assert image.meta.view == "AP"
    assert image.meta.bits_stored == 10
    # The air strip beside the leg is dark, the tibia's cortex bright.
    air = _region(image.pixels, (0.1, 0.4), (0.28, 0.34))
    tibia = _region(image.pixels, (0.1, 0.4), (0.47, 0.50))
    assert air < 0.2
    assert tibia > 0.6
