"""Synthetic DICOM files built with pydicom: each isolates one rule of the careful pixel path."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import get_encoder
from pydicom.uid import JPEGLSLossless, RLELossless, generate_uid

from services.errors import DecodeError
from services.imaging import decode_bytes, decode_image
from services.imaging.reasons import DecodeReason

from .conftest import dicom_bytes, gradient, make_dataset
from .test_decode_reasons import INTERNALS


def test_rescale_and_window(write_dicom) -> None:
    # Stored s -> rescaled 2s - 1000; window 1000/2000 covers rescaled 0..2000, i.e. stored 500..1500.
    stored = gradient(high=4000)
    ds = make_dataset(stored, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=1000, WindowWidth=2000)
    pixels = decode_image(write_dicom(ds)).pixels
    assert pixels[stored <= 500].max() == 0.0  # at and below the window's lower edge
    assert pixels[stored >= 1500].min() == 1.0  # at and above its upper edge
    middle = pixels[stored == 1000]
    np.testing.assert_allclose(middle, 0.5, atol=1e-3)
    inside = (stored > 500) & (stored < 1500)
    np.testing.assert_allclose(pixels[inside], (stored[inside] * 2 - 1000) / 2000, atol=1e-3)


def test_window_scaled_by_its_range_not_the_data(write_dicom) -> None:
    # Data occupying only the middle of a wide window must stay mid-grey, not be stretched to 0..1.
    stored = (gradient(high=1000) + 1500).astype(np.uint16)
    ds = make_dataset(stored, WindowCenter=2000, WindowWidth=4000)
    pixels = decode_image(write_dicom(ds)).pixels
    assert 0.37 < pixels.min() < 0.38
    assert 0.62 < pixels.max() < 0.63


def test_first_of_several_windows(write_dicom) -> None:
    stored = gradient(high=4000)
    ds = make_dataset(stored, WindowCenter=[1000, 3000], WindowWidth=[2000, 500])
    pixels = decode_image(write_dicom(ds)).pixels
    np.testing.assert_allclose(pixels[stored == 1000], 0.5, atol=1e-3)


def test_voi_lut_sequence(write_dicom) -> None:
    # A 16-bit descriptor whose entries only reach 4095 (a common quirk): scaled by the LUT's own range.
    stored = gradient(high=255)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.add_new("LUTData", "US", [round((i / 255) ** 2 * 4095) for i in range(256)])
    ds = make_dataset(stored, VOILUTSequence=[item])
    pixels = decode_image(write_dicom(ds)).pixels
    np.testing.assert_allclose(pixels, np.rint((stored / 255) ** 2 * 4095) / 4095, atol=1e-6)


def test_no_window_uses_robust_percentiles(write_dicom) -> None:
    stored = gradient(high=10000)
    stored[0, 0] = 65535  # one hot pixel must not squash the rest
    pixels = decode_image(write_dicom(make_dataset(stored))).pixels
    # The 0.5th and 99.5th percentiles of a 0..10000 ramp are near 50 and 9950.
    assert pixels[stored <= 45].max() == 0.0
    assert pixels[(stored >= 9955) & (stored <= 10000)].min() == 1.0
    np.testing.assert_allclose(pixels[stored == 5000], 0.5, atol=0.01)


def test_unusable_window_falls_back(write_dicom) -> None:
    stored = gradient(high=4000)
    plain = decode_image(write_dicom(make_dataset(stored), "plain.dcm")).pixels
    zero_width = make_dataset(stored, WindowCenter=100, WindowWidth=0)  # invalid for LINEAR
    outside = make_dataset(stored, WindowCenter=60000, WindowWidth=10)  # every pixel below it
    np.testing.assert_array_equal(decode_image(write_dicom(zero_width, "zero.dcm")).pixels, plain)
    np.testing.assert_array_equal(decode_image(write_dicom(outside, "out.dcm")).pixels, plain)


def test_monochrome1_inverted(write_dicom) -> None:
    stored = gradient()
    mono2 = decode_image(write_dicom(make_dataset(stored), "m2.dcm")).pixels
    mono1 = decode_image(write_dicom(make_dataset(stored, PhotometricInterpretation="MONOCHROME1"), "m1.dcm"))
    np.testing.assert_allclose(mono1.pixels, 1.0 - mono2, atol=1e-6)


def test_bits_stored_masks_high_bits(write_dicom) -> None:
    clean = gradient(high=4095)
    garbage = clean | np.uint16(0xB000)  # junk above bit 11, as some modalities write overlays there
    ds = make_dataset(garbage, BitsStored=12, HighBit=11)
    image = decode_image(write_dicom(ds, "garbage.dcm"))
    reference = decode_image(write_dicom(make_dataset(clean, BitsStored=12, HighBit=11), "clean.dcm"))
    np.testing.assert_array_equal(image.pixels, reference.pixels)
    assert image.meta.bits_stored == 12


def test_signed_pixels(write_dicom) -> None:
    values = np.linspace(-2048, 2047, 64 * 80).reshape(64, 80).round().astype(np.int16)
    twelve_bit = (values.view(np.uint16) & 0x0FFF).view(np.int16)  # stored unextended in 12 of 16 bits
    ds = make_dataset(twelve_bit, BitsStored=12, HighBit=11, PixelRepresentation=1)
    pixels = decode_image(write_dicom(ds, "s12.dcm")).pixels
    reference = decode_image(write_dicom(make_dataset(values), "s16.dcm")).pixels
    np.testing.assert_array_equal(pixels, reference)
    assert pixels[0, 0] == 0.0 and pixels[-1, -1] == 1.0  # -2048 darkest, 2047 brightest


@pytest.mark.filterwarnings("ignore:Invalid value for VR AS")
def test_malformed_optional_metadata_is_ignored(write_dicom) -> None:
    ds = make_dataset(gradient(), PatientAge="abc", PatientSex="X", BodyPartExamined="")
    meta = decode_image(write_dicom(ds)).meta
    assert (meta.age, meta.sex, meta.body_part) == (None, None, None)
    ds = make_dataset(gradient(), PatientAge="045Y", PatientSex="M", ViewPosition="AP")
    meta = decode_image(write_dicom(ds)).meta
    assert (meta.age, meta.sex, meta.view, meta.patient_id) == (45, "M", "AP", "SYN-1")


def test_without_preamble(tmp_path: Path) -> None:
    ds = make_dataset(gradient())
    full = dicom_bytes(ds)
    reference = decode_bytes(full).pixels
    meta_first = tmp_path / "no_preamble"  # starts at group 0002, no extension either
    meta_first.write_bytes(full[132:])
    assert full[132:134] == b"\x02\x00"
    np.testing.assert_array_equal(decode_image(meta_first).pixels, reference)

    del ds.file_meta  # no file meta at all: starts at group 0008
    for implicit in (True, False):
        path = tmp_path / f"bare_{implicit}.dcm"
        pydicom.dcmwrite(path, ds, implicit_vr=implicit, little_endian=True)
        assert path.read_bytes()[:2] == b"\x08\x00"
        np.testing.assert_array_equal(decode_image(path).pixels, reference)


def test_rle_lossless(write_dicom) -> None:
    stored = gradient()
    ds = make_dataset(stored)
    reference = decode_image(write_dicom(ds, "plain.dcm")).pixels
    ds.compress(RLELossless)
    image = decode_image(write_dicom(ds, "rle.dcm"))
    assert image.meta.transfer_syntax == RLELossless
    np.testing.assert_array_equal(image.pixels, reference)


@pytest.mark.skipif(not get_encoder(JPEGLSLossless).is_available, reason="no JPEG-LS encoder (pyjpegls)")
def test_jpeg_ls_lossless(write_dicom) -> None:
    ds = make_dataset(gradient(high=4095), BitsStored=12, HighBit=11)
    reference = decode_image(write_dicom(ds, "plain.dcm")).pixels
    ds.compress(JPEGLSLossless)
    np.testing.assert_array_equal(decode_image(write_dicom(ds, "jls.dcm")).pixels, reference)


def test_grey_rgb_accepted_colour_refused(write_dicom) -> None:
    grey = np.rint(np.linspace(0, 255, 64 * 80)).reshape(64, 80).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    image = decode_image(write_dicom(make_dataset(rgb), "grey.dcm"))
    np.testing.assert_allclose(image.pixels, grey / 255, atol=1e-6)
    rgb[..., 0] = 255 - grey
    with pytest.raises(DecodeError, match="colour image"):
        decode_image(write_dicom(make_dataset(rgb), "colour.dcm"))


def test_multi_frame_refused(write_dicom) -> None:
    frames = np.concatenate([gradient(), gradient()])
    ds = make_dataset(frames, Rows=64, NumberOfFrames=2)
    with pytest.raises(DecodeError, match=r"multi-frame image \(2 frames\)"):
        decode_image(write_dicom(ds))


def test_no_pixel_data_refused(write_dicom) -> None:
    ds = make_dataset(gradient())
    del ds.PixelData, ds.Rows, ds.Columns
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    with pytest.raises(DecodeError, match="no pixel data: Basic Text SR Storage is not an image"):
        decode_image(write_dicom(ds))


def test_bomb_refused_before_decoding(write_dicom) -> None:
    ds = make_dataset(gradient(), Rows=60000, Columns=60000)  # 3.6 Gpx declared over 10 kB of data
    path = write_dicom(ds)
    with pytest.raises(DecodeError, match="too many pixels"):
        decode_image(path, max_pixels=1_000_000)
    with pytest.raises(DecodeError, match="too many pixels"):
        decode_image(path)  # the default limit


def test_too_small_refused(write_dicom) -> None:
    with pytest.raises(DecodeError, match="too small"):
        decode_image(write_dicom(make_dataset(gradient(20, 300))))
    assert decode_image(write_dicom(make_dataset(gradient(20, 300))), min_side=16).pixels.shape == (20, 300)


def test_blank_refused(write_dicom) -> None:
    with pytest.raises(DecodeError, match="blank image"):
        decode_image(write_dicom(make_dataset(np.full((64, 64), 700, np.uint16))))


def test_unsupported_transfer_syntax(write_dicom) -> None:
    ds = make_dataset(gradient())
    ds.compress(RLELossless)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: pydicom has no decoder at all
    with pytest.raises(DecodeError, match=r"unsupported transfer syntax MPEG2.*\(1\.2\.840\.10008\.1\.2\.4\.100\)"):
        decode_image(write_dicom(ds))


def test_missing_decoder_names_package(dicom_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Unavailable:
        is_available = False
        missing_dependencies = ["openjpeg - requires numpy and pylibjpeg-openjpeg"]

    monkeypatch.setattr("services.imaging.dicom.get_decoder", lambda uid: Unavailable())
    with pytest.raises(DecodeError, match=r"no decoder installed for JPEG 2000.*1\.2\.840\.10008\.1\.2\.4\.90") as info:
        decode_image(dicom_dir / "RG1_J2KR.dcm")
    assert "pylibjpeg-openjpeg" in info.value.hint


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm"])
def test_truncated_real_file_refused(dicom_dir: Path, name: str) -> None:
    data = (dicom_dir / name).read_bytes()
    for cut in (len(data) // 2, 132, 200, 1000, 3000):
        with pytest.raises(DecodeError) as info:
            decode_bytes(data[:cut], name)
        assert info.value.path == name


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about every invalid value it meets
def test_corrupted_bytes_only_raise_decode_error() -> None:
    # Flip bytes through a small file: in its pixel values, in its header, or anywhere. Whatever breaks, the caller
    # gets a DecodeError with a stable code and a plain reason, or a sane image; never another exception.
    pixels = gradient()
    data = bytearray(dicom_bytes(make_dataset(pixels, SOPInstanceUID=generate_uid())))
    pixel_start = len(data) - pixels.nbytes  # Pixel Data is the last element: its value ends the file
    intact = decode_bytes(bytes(data)).pixels
    rng = np.random.default_rng(0)
    refused: Counter[str] = Counter()
    decoded = {"pixels": 0, "header": 0, "anywhere": 0}
    for trial in range(90):
        where = ("pixels", "header", "anywhere")[trial % 3]
        low, high = {"pixels": (pixel_start, len(data)), "header": (132, pixel_start)}.get(where, (132, len(data)))
        broken = bytearray(data)
        for pos in rng.integers(low, high, size=8):
            broken[pos] = int(rng.integers(0, 256))
        try:
            out = decode_bytes(bytes(broken)).pixels
        except DecodeError as exc:
            assert exc.code in set(DecodeReason), (where, exc.code)
            assert exc.reason and not any(word in exc.reason for word in INTERNALS), (where, exc.reason)
            refused[exc.code] += 1
            continue
        assert out.ndim == 2 and out.dtype == np.float32 and np.isfinite(out).all(), where
        assert out.min() >= 0.0 and out.max() <= 1.0, where
        decoded[where] += 1
        if where == "pixels":  # no checksum in DICOM: damaged values decode, in the film's own shape
            assert out.shape == intact.shape
    print(f"\ncorrupted bytes: decoded {decoded}, refused {dict(refused)}")
    assert decoded["pixels"] == 30, "a flip in the pixel values alone must never stop the decode"
    assert sum(refused.values()) >= 10 and decoded["header"] + decoded["anywhere"] >= 10, (refused, decoded)
