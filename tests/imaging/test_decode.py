"""The entry points: paths that cannot be read, bytes in memory, sniffing, and metadata parsing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.errors import DecodeError
from services.imaging import decode_bytes, decode_image, is_dicom, to_model_input
from services.imaging.dicom_meta import parse_age, parse_sex
from services.imaging.reasons import DecodeReason

from .conftest import dicom_bytes, gradient, make_dataset


def test_missing_path() -> None:
    with pytest.raises(DecodeError, match="file not found") as info:
        decode_image("/nonexistent/film.dcm")
    assert info.value.path == "/nonexistent/film.dcm"


def test_invalid_path() -> None:
    with pytest.raises(DecodeError, match="invalid path"):
        decode_image("film\0.dcm")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="is a directory"):
        decode_image(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.dcm").touch()
    with pytest.raises(DecodeError, match="empty file"):
        decode_image(tmp_path / "empty.dcm")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file: the kernel never says EACCES to root")
def test_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "locked.png"
    Image.fromarray(gradient().astype(np.uint8)).save(path)
    path.chmod(0)
    with pytest.raises(DecodeError, match="permission denied") as info:
        decode_image(path)
    assert info.value.code == DecodeReason.UNREADABLE


def _unreadable_even_as_root(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Paths the kernel refuses to open for reading whoever asks (root included), and the reason each gets."""
    a_file = tmp_path / "not-a-folder.png"
    Image.fromarray(gradient().astype(np.uint8)).save(a_file)
    os.mkfifo(tmp_path / "pipe.png")
    return {
        "parent is a file (ENOTDIR)": (a_file / "film.png", "cannot read the file (Not a directory)"),
        "a directory": (tmp_path, "is a directory, not a file"),
        "a named pipe": (tmp_path / "pipe.png", "named pipe (FIFO)"),
    }


def test_unreadable_paths_fail_with_their_reason_as_any_user(tmp_path: Path) -> None:
    for what, (path, reason) in _unreadable_even_as_root(tmp_path).items():
        with pytest.raises(DecodeError) as info:
            decode_image(path)
        got = (info.value.code, info.value.reason, info.value.path)
        assert got == (DecodeReason.UNREADABLE, reason, str(path)), what


def test_ingest_reports_each_unreadable_item_with_its_reason(tmp_path: Path, tiny_checkpoint: Path, data_dir: Path):
    """Through the real ingest (decode stage, per-item failures), beside a good file that lands."""
    from services.config import Settings
    from services.pipeline import IngestItem, IngestOptions, Ingestor, Runtime

    (tmp_path / "odd").mkdir()
    cases = _unreadable_even_as_root(tmp_path / "odd")
    good = tmp_path / "good.png"
    Image.fromarray(gradient(high=255).astype(np.uint8)).save(good)
    items = [IngestItem(good)] + [IngestItem(path) for path, _ in cases.values()]
    with Runtime(Settings(), model_path=tiny_checkpoint) as rt:
        opts = IngestOptions(collection="unreadable", batch_size=4, decode_workers=1)
        report = Ingestor(rt.encoder, rt.store, opts, salt=rt.settings.salt).run(items)
    assert report.indexed == 1
    got = sorted((f.path, f.stage, f.reason) for f in report.failed)
    assert got == sorted((str(path), "decode", reason) for path, reason in cases.values())


def test_extension_is_ignored(tmp_path: Path) -> None:
    dicom_as_png = tmp_path / "film.png"
    dicom_as_png.write_bytes(dicom_bytes(make_dataset(gradient())))
    assert decode_image(dicom_as_png).meta.format == "dicom"
    png_as_dicom = tmp_path / "film.dcm"
    Image.fromarray(gradient().astype(np.uint8)).save(png_as_dicom, format="PNG")
    assert decode_image(png_as_dicom).meta.format == "png"


def test_decode_bytes_round_trip_dicom(dicom_dir: Path) -> None:
    path = dicom_dir / "RG3_UNCR.dcm"
    from_bytes = decode_bytes(path.read_bytes(), "upload.dcm")
    from_path = decode_image(path)
    np.testing.assert_array_equal(from_bytes.pixels, from_path.pixels)
    assert from_bytes.meta == from_path.meta


def test_decode_bytes_round_trip_png(tmp_path: Path) -> None:
    path = tmp_path / "ramp.png"
    Image.fromarray(gradient(high=255).astype(np.uint8)).save(path)
    from_bytes = decode_bytes(path.read_bytes())
    np.testing.assert_array_equal(from_bytes.pixels, decode_image(path).pixels)
    with pytest.raises(DecodeError) as info:
        decode_bytes(b"")
    assert info.value.path == "<upload>"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\0" * 128 + b"DICM\x02\x00\x00\x00UL", True),
        (b"\x02\x00\x00\x00UL\x04\x00\xc4\x00\x00\x00", True),  # file meta, no preamble
        (b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100", True),  # explicit VR dataset, no meta
        (b"\x08\x00\x16\x00\x1a\x00\x00\x001.2.840", True),  # implicit VR dataset, no meta
        (b"\x08\x00\xff\xff\xff\xff\xff\xff", False),  # group 8 by chance, absurd length
        (b"\x89PNG\r\n\x1a\n", False),
        (b"\xff\xd8\xff\xe0", False),
        (b"hello world", False),
        (b"", False),
    ],
)
def test_is_dicom(head: bytes, expected: bool) -> None:
    assert is_dicom(head) is expected


@pytest.mark.parametrize(
    ("value", "years"),
    [
        ("045Y", 45),
        ("45", 45),
        ("006M", 0),
        ("030M", 2),
        ("003W", 0),
        ("010D", 0),
        ("abc", None),
        ("", None),
        (None, None),
        ("999Y", None),
    ],
)
def test_parse_age(value: str | None, years: int | None) -> None:
    assert parse_age(value) == years


def test_parse_sex() -> None:
    assert [parse_sex(v) for v in ("M", "f", "O", "X", "", None)] == ["M", "F", "O", None, None, None]


@pytest.mark.parametrize("shape", [(1955, 1841), (48, 300), (224, 224), (40, 40)])
def test_to_model_input(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.random(shape, dtype=np.float32)
    out = to_model_input(pixels, 224)
    assert out.shape == (224, 224)
    assert out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert abs(float(out.mean()) - float(pixels.mean())) < 0.02


def test_to_model_input_keeps_content() -> None:
    # A left-dark, right-bright film stays so, with the edge where it was (stretching, no padding).
    pixels = np.zeros((400, 300), np.float32)
    pixels[:, 150:] = 1.0
    out = to_model_input(pixels, 64)
    assert out[:, :30].max() == 0.0 and out[:, 34:].min() == 1.0
    np.testing.assert_array_equal(to_model_input(pixels[:64, :64], 64), pixels[:64, :64])


def test_to_model_input_rejects_colour() -> None:
    with pytest.raises(ValueError, match="2-D"):
        to_model_input(np.zeros((64, 64, 3), np.float32), 224)
