"""The size a compressed frame declares, read from its own header: JPEG and JPEG-LS SOF, JPEG 2000 SIZ (raw and in a
JP2 file); None for anything else or a header cut short, never an exception."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from pydicom.encaps import generate_fragmented_frames
from pydicom.uid import JPEGLSLossless

from services.imaging.codestream import declared_size

from .bad_files import j2k, j2k_claiming, jpeg, jpeg_claiming, textured
from .conftest import gradient, make_dataset


def test_jpeg_and_its_lying_twin() -> None:
    assert declared_size(jpeg(textured(200, 256))) == (200, 256)
    assert declared_size(jpeg_claiming(30_000, 20_000)) == (20_000, 30_000)


def test_jpeg_ls_from_a_dicom_frame() -> None:
    ds = make_dataset(gradient(70, 90))
    ds.compress(JPEGLSLossless, encoding_plugin="pyjpegls")
    frame = next(generate_fragmented_frames(ds.PixelData, number_of_frames=1))[0]
    assert declared_size(frame) == (70, 90)


def test_jpeg_2000_raw_and_in_a_jp2_file() -> None:
    assert declared_size(j2k(textured(100, 120))) == (100, 120)
    assert declared_size(j2k_claiming(30_000, 20_000)) == (20_000, 30_000)
    buf = io.BytesIO()
    Image.fromarray(textured(64, 48)).save(buf, format="JPEG2000")  # with the JP2 boxes
    assert buf.getvalue()[4:8] == b"jP  " and declared_size(buf.getvalue()) == (64, 48)


def test_anything_else_or_a_header_cut_short_is_none() -> None:
    whole_jpeg, whole_j2k = jpeg(textured()), j2k(textured())
    for data in (b"", b"\xff\xd8", whole_jpeg[:20], whole_j2k[:20], b"\x00" * 64, b"RLE segments", bytes(range(256))):
        assert declared_size(data) is None, data[:16]
    assert declared_size(np.zeros(16, np.uint8).tobytes()) is None
