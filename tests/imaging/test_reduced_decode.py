"""A decode reduced to the model's input side gives the model input a full decode gives: to float precision on the
box-reduced paths (every raster and uncompressed or lossless DICOM, windows and LUTs included), within a stated
tolerance where a JPEG 2000 frame is decoded at a lower resolution level. Real data: pydicom-data's CRs and
cxr-public. benchmarks/decode.py measures the same against the trained model's embeddings."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless

from services.errors import DecodeError
from services.imaging import DecodedImage, decode_bytes, decode_image, to_model_input
from services.imaging.jpeg2000 import decode_reduced, resolution_level
from services.imaging.reduce import reduction_factors

from .conftest import dicom_bytes, gradient, make_dataset

SIDE = 128  # the trained models' input side
EXACT = 1e-5  # float32 rounding: the same model input
# A JPEG 2000 resolution level in place of part of the box (measured on these files at 128 px: 0.026 at most).
LEVEL_MAX_ABS = 0.03
COSINE = 0.999
REAL_CRS = [f"RG{n}_{kind}.dcm" for n in (1, 3) for kind in ("UNCI", "UNCR", "J2KI", "J2KR")]


def _inputs(full: DecodedImage, reduced: DecodedImage, size: int) -> tuple[np.ndarray, np.ndarray]:
    return to_model_input(full.pixels, size), to_model_input(reduced.pixels, size, extent=reduced.extent)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _uses_a_level(data: bytes, size: int) -> bool:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    j2k = ds.file_meta.TransferSyntaxUID in ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")
    return j2k and resolution_level(reduction_factors(ds.Rows, ds.Columns, size)) > 0


@pytest.mark.parametrize("name", REAL_CRS)
def test_real_crs_give_todays_model_input(name: str, decoded: Callable, testdata: Callable) -> None:
    full = decoded(name)
    data = testdata(name).read_bytes()
    reduced = decode_bytes(data, name, target_side=SIDE)
    assert reduced.meta == full.meta  # the file's own size, not the reduced one
    assert reduced.pixels.size * 30 < full.pixels.size
    a, b = _inputs(full, reduced, SIDE)
    assert _cosine(a, b) >= COSINE
    limit = LEVEL_MAX_ABS if _uses_a_level(data, SIDE) else EXACT
    assert np.abs(a - b).max() <= limit, name


def _public_sample(cxr_public: Path, count: int = 24) -> list[Path]:
    with (cxr_public / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [cxr_public / r["path"] for r in rows[:: len(rows) // count][:count]]


def test_cxr_public_gives_todays_model_input(cxr_public: Path) -> None:
    """At 128 px most of these 224-320 px JPEGs are not reduced at all; at 32 and 64 px they are (2-5x)."""
    for path in _public_sample(cxr_public):
        full = decode_image(path)
        for size in (32, 64, SIDE):
            reduced = decode_image(path, target_side=size)
            a, b = _inputs(full, reduced, size)
            assert np.abs(a - b).max() <= EXACT, (path.name, size, reduced.reduction)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG16", "PNG-RGB"])
def test_large_copies_of_cxr_public_give_todays_model_input(cxr_public: Path, fmt: str) -> None:
    """Six-fold copies (1,300-1,900 px): JPEG, 16-bit PNG, and a grey PNG stored as RGB."""
    for path in _public_sample(cxr_public, 3):
        with Image.open(path) as image:
            big = image.resize((image.width * 6, image.height * 6), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        if fmt == "JPEG":
            big.save(buf, format="JPEG", quality=90)
        elif fmt == "PNG16":
            Image.fromarray(np.asarray(big).astype(np.uint16) * 257).save(buf, format="PNG")
        else:
            big.convert("RGB").save(buf, format="PNG")
        full, reduced = decode_bytes(buf.getvalue()), decode_bytes(buf.getvalue(), target_side=SIDE)
        assert min(reduced.reduction) >= 5 and reduced.meta == full.meta
        a, b = _inputs(full, reduced, SIDE)
        assert np.abs(a - b).max() <= EXACT, (path.name, fmt)


def _noisy(height: int = 600, width: int = 700, high: int = 4000) -> np.ndarray:
    """A ramp with noise, so box means and clipping disagree wherever a window's edge crosses it."""
    noise = np.random.default_rng(0).normal(0, high / 20, (height, width))
    return np.clip(gradient(height, width, high) + noise, 0, high).astype(np.uint16)


def _lut_item(entries: int, bits: int, table: list[int], first: int = 0) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [entries, first, bits]
    item.add_new("LUTData", "US", table)
    return item


def _windowed_cases() -> dict[str, Dataset]:
    stored = _noisy()
    squared = [round((i / 4095) ** 2 * 4095) for i in range(4096)]
    signed = (stored.astype(np.int32) - 2000).astype(np.int16)
    eight_bit = (stored // 16).astype(np.uint8)
    return {
        "narrow window": make_dataset(stored, WindowCenter=1800, WindowWidth=300),
        "window after rescale": make_dataset(
            stored, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=1000, WindowWidth=2000
        ),
        "sigmoid window": make_dataset(stored, WindowCenter=2000, WindowWidth=800, VOILUTFunction="SIGMOID"),
        "VOI LUT": make_dataset(stored, VOILUTSequence=[_lut_item(4096, 12, squared)]),
        "modality LUT": make_dataset(stored, ModalityLUTSequence=[_lut_item(4096, 16, squared)]),
        "modality LUT and window": make_dataset(
            stored, ModalityLUTSequence=[_lut_item(4096, 16, squared)], WindowCenter=1500, WindowWidth=1000
        ),
        "no window (percentiles)": make_dataset(stored),
        "window off the data (percentiles)": make_dataset(stored, WindowCenter=60000, WindowWidth=10),
        "MONOCHROME1": make_dataset(
            stored, PhotometricInterpretation="MONOCHROME1", WindowCenter=2000, WindowWidth=1000
        ),
        "signed": make_dataset(signed, PixelRepresentation=1, WindowCenter=0, WindowWidth=1500),
        "8-bit": make_dataset(eight_bit, WindowCenter=128, WindowWidth=100),
        "grey RGB": make_dataset(np.repeat(eight_bit[..., None], 3, axis=-1)),
    }


@pytest.mark.parametrize(("case", "ds"), list(_windowed_cases().items()), ids=list(_windowed_cases()))
def test_windows_and_luts_still_act_on_every_stored_value(case: str, ds: Dataset) -> None:
    """Reducing first and windowing after would differ wherever a window clips; the reduced decode maps each
    stored value through the same transform (a table of codes) before averaging, so the result is the same."""
    data = dicom_bytes(ds)
    full = decode_bytes(data)
    for size in (32, 64):
        reduced = decode_bytes(data, target_side=size)
        assert reduced.reduction == reduction_factors(600, 700, size)
        a, b = _inputs(full, reduced, size)
        assert np.abs(a - b).max() <= EXACT, (case, size)


def test_colour_is_still_refused_when_reduced() -> None:
    grey = (_noisy() // 16).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgb[..., 0] = 255 - grey
    for data in (dicom_bytes(make_dataset(rgb)), _png(rgb)):
        with pytest.raises(DecodeError, match="colour image"):
            decode_bytes(data, target_side=32)


def test_exif_turned_jpeg_keeps_its_upright_size() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    Image.fromarray((_noisy(400, 640) // 16).astype(np.uint8)).save(buf, format="JPEG", exif=exif, quality=95)
    full, reduced = decode_bytes(buf.getvalue()), decode_bytes(buf.getvalue(), target_side=32)
    assert (reduced.meta.height, reduced.meta.width) == (full.meta.height, full.meta.width) == (640, 400)
    assert reduced.reduction == (10, 6)
    a, b = _inputs(full, reduced, 32)
    assert np.abs(a - b).max() <= EXACT


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _j2k(values: np.ndarray, **attrs: object) -> bytes:
    ds = make_dataset(values, **attrs)
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    return dicom_bytes(ds)


@pytest.mark.parametrize("signed", [False, True])
def test_jpeg2000_at_a_lower_level_stays_within_tolerance(signed: bool) -> None:
    stored = _noisy(520, 540)  # factors 4 at 64 px: decoded at level 1, then box-reduced by 2
    attrs: dict[str, object] = {"BitsStored": 12, "HighBit": 11, "WindowCenter": 2000, "WindowWidth": 3000}
    if signed:
        stored = (stored.astype(np.int32) - 2048).astype(np.int16)
        attrs |= {"PixelRepresentation": 1, "WindowCenter": 0}
    data = _j2k(stored, **attrs)
    assert _uses_a_level(data, 64)
    full, reduced = decode_bytes(data), decode_bytes(data, target_side=64)
    assert reduced.reduction == (4, 4)
    a, b = _inputs(full, reduced, 64)
    assert np.abs(a - b).max() <= LEVEL_MAX_ABS and _cosine(a, b) >= COSINE
    frame = pydicom.encaps.generate_fragmented_frames(pydicom.dcmread(io.BytesIO(data)).PixelData, number_of_frames=1)
    level1 = decode_reduced(b"".join(next(frame)), 1, bits_stored=12, signed=signed)
    assert level1 is not None and level1.dtype == stored.dtype and level1.shape == (260, 270)
    # The wavelet's low-pass, not the 2 x 2 means (the noise differs), but the same values: no shift, no offset.
    block_means = stored.reshape(260, 2, 270, 2).mean(axis=(1, 3))
    assert np.corrcoef(level1.ravel(), block_means.ravel())[0, 1] > 0.99
    assert abs(level1.mean() - stored.mean()) < 10  # of 0..4000 (the low-pass is clamped at the ends)


def test_an_odd_factor_takes_a_level_and_a_factor_of_one_does_not() -> None:
    stored = _noisy(520, 540)
    odd = _j2k(stored)  # factors 3 at 80 px: level 1, then the box its half-size image calls for
    full, reduced = decode_bytes(odd), decode_bytes(odd, target_side=80)
    assert _uses_a_level(odd, 80) and reduced.reduction == (2, 2)  # 260 x 270 is under 4 x 80: no box after it
    a, b = _inputs(full, reduced, 80)
    assert _cosine(a, b) >= COSINE and np.abs(a - b).max() <= LEVEL_MAX_ABS
    assert not _uses_a_level(odd, 200)  # factor 1: nothing to skip
    same = decode_bytes(odd, target_side=200)
    assert same.reduction == (1, 1)
    assert (
        np.abs(to_model_input(full.pixels, 200) - to_model_input(same.pixels, 200, extent=same.extent)).max() <= EXACT
    )


def test_jpeg2000_that_does_not_fit_the_simple_case_is_decoded_whole() -> None:
    odd = _j2k(_noisy(520, 540))
    frame = pydicom.encaps.generate_fragmented_frames(pydicom.dcmread(io.BytesIO(odd)).PixelData, number_of_frames=1)
    raw = b"".join(next(frame))
    assert decode_reduced(raw, 1, bits_stored=12, signed=False) is None  # the codestream says 16 bits, not 12
    assert decode_reduced(raw, 1, bits_stored=16, signed=True) is None
    assert decode_reduced(raw[:200], 1, bits_stored=16, signed=False) is None  # cut short: pydicom words it


def test_embeddings_of_a_128_px_model_match(decoded: Callable, testdata: Callable, cxr_public: Path) -> None:
    """A random-init ViT at 128 px as a stand-in for the trained one (benchmarks/decode.py uses that)."""
    from services.embedding import BatchEncoder, create_encoder

    encoder = BatchEncoder(create_encoder("vit-tiny", image_size=SIDE, embed_dim=64, seed=0), bf16=False)
    pairs = [_inputs(decoded(n), decode_image(testdata(n), target_side=SIDE), SIDE) for n in REAL_CRS]
    pairs += [_inputs(decode_image(p), decode_image(p, target_side=SIDE), SIDE) for p in _public_sample(cxr_public)]
    full, reduced = (encoder.encode(np.stack(side)) for side in zip(*pairs, strict=True))
    assert (full * reduced).sum(axis=1).min() >= COSINE
