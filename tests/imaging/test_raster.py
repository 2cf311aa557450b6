"""Raster files through Pillow: the public JPEGs, 16-bit PNG scaling, grey-in-RGB, and what is refused."""

from __future__ import annotations

import csv
import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.errors import DecodeError
from services.imaging import decode_bytes, decode_image


def _ramp(height: int = 48, width: int = 64) -> np.ndarray:
    return np.rint(np.linspace(0, 255, height * width)).reshape(height, width).astype(np.uint8)


def _png_bytes(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def test_public_jpeg(cxr_public: Path) -> None:
    with (cxr_public / "manifest.csv").open() as fh:
        row = next(csv.DictReader(fh))
    path = cxr_public / row["path"]
    image = decode_image(path)
    expected = np.asarray(Image.open(path), dtype=np.float32) / 255
    np.testing.assert_array_equal(image.pixels, expected)
    assert image.pixels.dtype == np.float32
    assert max(image.pixels.shape) <= 320
    assert (image.meta.format, image.meta.bits_stored, image.meta.photometric) == ("jpeg", 8, "L")
    assert (image.meta.height, image.meta.width) == image.pixels.shape
    assert image.meta.modality is None and image.meta.patient_id is None


def test_sixteen_bit_png_scaled_by_full_range(tmp_path: Path) -> None:
    values = np.rint(np.linspace(0, 4095, 48 * 64)).reshape(48, 64).astype(np.uint16)  # 12-bit data
    values[0, 0] = 65535
    path = tmp_path / "sixteen.png"
    Image.fromarray(values).save(path)
    image = decode_image(path)
    np.testing.assert_allclose(image.pixels, values / 65535, atol=1e-7)  # not stretched to its own max
    assert image.meta.bits_stored == 16
    assert image.meta.photometric.startswith("I")


def test_eight_bit_png(tmp_path: Path) -> None:
    path = tmp_path / "ramp.png"
    Image.fromarray(_ramp()).save(path)
    np.testing.assert_allclose(decode_image(path).pixels, _ramp() / 255, atol=1e-7)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P"])
def test_grey_stored_as_colour_accepted(tmp_path: Path, mode: str) -> None:
    path = tmp_path / f"grey_{mode}.png"
    Image.fromarray(_ramp()).convert(mode).save(path)
    np.testing.assert_allclose(decode_image(path).pixels, _ramp() / 255, atol=1e-6)


def test_grey_rgb_jpeg_accepted(tmp_path: Path) -> None:
    # Chroma noise from JPEG compression must not make a grey film "colour".
    path = tmp_path / "grey_rgb.jpg"
    Image.fromarray(_ramp(96, 128)).convert("RGB").save(path, quality=75)
    assert decode_image(path).pixels.shape == (96, 128)


def test_colour_png_refused(tmp_path: Path) -> None:
    rgb = np.stack([_ramp(), 255 - _ramp(), np.full_like(_ramp(), 128)], axis=-1)
    path = tmp_path / "colour.png"
    Image.fromarray(rgb).save(path)
    with pytest.raises(DecodeError, match="colour image"):
        decode_image(path)


def test_too_small_refused(tmp_path: Path) -> None:
    path = tmp_path / "tiny.png"
    Image.fromarray(_ramp(20, 20)).save(path)
    with pytest.raises(DecodeError, match="too small: 20x20"):
        decode_image(path)


def test_blank_refused(tmp_path: Path) -> None:
    path = tmp_path / "blank.png"
    Image.new("L", (64, 64), 128).save(path)
    with pytest.raises(DecodeError, match="blank image"):
        decode_image(path)


def test_pixel_limit_checked_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(_ramp(200, 200)).save(path)
    with pytest.raises(DecodeError, match="too many pixels"):
        decode_image(path, max_pixels=10_000)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_png_bomb_header_refused() -> None:
    # A 100000 x 100000 PNG declared in a 60-byte file: refused from the header, nothing is inflated.
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IEND", b"")
    with pytest.raises(DecodeError, match="too many pixels"):
        decode_bytes(data, "bomb.png")
    with pytest.raises(DecodeError, match="too many pixels"):
        decode_bytes(data, "bomb.png", max_pixels=10**11)  # past our limit, Pillow's own guard answers


def test_multi_frame_tiff_refused(tmp_path: Path) -> None:
    path = tmp_path / "pages.tiff"
    first, second = Image.fromarray(_ramp()), Image.fromarray(255 - _ramp())
    first.save(path, save_all=True, append_images=[second])
    with pytest.raises(DecodeError, match=r"multi-frame image \(2 frames\)"):
        decode_image(path)


@pytest.mark.parametrize(
    ("mode", "scale"), [("1", 1.0), ("L", 255.0), ("I;16", 65535.0)], ids=["bilevel", "8bit", "16bit"]
)
def test_tiff_modes(tmp_path: Path, mode: str, scale: float) -> None:
    if mode == "I;16":
        image = Image.fromarray(_ramp().astype(np.uint16) * 257)
    else:
        image = Image.fromarray(_ramp()).convert(mode)
    path = tmp_path / "modes.tiff"
    image.save(path)
    decoded = decode_image(path)
    assert decoded.meta.format == "tiff"
    np.testing.assert_allclose(decoded.pixels, np.asarray(image, dtype=np.float64) / scale, atol=1e-6)


def test_float_tiff_uses_its_own_range(tmp_path: Path) -> None:
    values = np.linspace(-3.0, 5.0, 48 * 64, dtype=np.float32).reshape(48, 64)
    path = tmp_path / "float.tiff"
    Image.fromarray(values, mode="F").save(path)
    pixels = decode_image(path).pixels
    assert pixels.min() == 0.0 and pixels.max() == 1.0
    np.testing.assert_allclose(pixels, (values + 3) / 8, atol=1e-6)


def test_exif_orientation_applied(tmp_path: Path) -> None:
    image = Image.fromarray(_ramp(48, 64))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    assert decode_image(path).pixels.shape == (64, 48)


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("notes.png", b"patient has a cough\nsee attached film\n" * 4, "looks like a text file"),
        ("empty.png", b"", "empty file"),
        ("scan.dcm", b"%PDF-1.7\n" + bytes(range(256)) * 4, "looks like a PDF"),
        ("noise.jpg", bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)), "unrecognised"),
    ],
    ids=["text", "empty", "pdf", "noise"],
)
def test_non_images_refused(tmp_path: Path, name: str, data: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(DecodeError, match=reason):
        decode_image(path)


def test_zip_refused(tmp_path: Path) -> None:
    path = tmp_path / "films.png"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.txt", "hello")
    with pytest.raises(DecodeError, match="zip archive"):
        decode_image(path)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF"])
def test_truncated_raster_refused(fmt: str) -> None:
    data = _png_bytes(Image.fromarray(_ramp(256, 256)), fmt)
    for cut in (len(data) // 2, 40, 12):
        with pytest.raises(DecodeError):
            decode_bytes(data[:cut], f"cut.{fmt.lower()}")
