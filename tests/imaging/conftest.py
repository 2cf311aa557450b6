"""Builders for synthetic DICOM files and a cache of the slow real decodes."""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from services.imaging import DecodedImage, decode_image

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def make_dataset(pixels: np.ndarray, **attrs: object) -> Dataset:
    """A minimal CR image dataset around `pixels` (uint16/int16 (H, W), or uint8 (H, W, 3) for colour)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CR_STORAGE
    ds.SOPClassUID = CR_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.PatientID = "SYN-1"
    colour = pixels.ndim == 3
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def dicom_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def gradient(height: int = 64, width: int = 80, high: int = 4000) -> np.ndarray:
    """A uint16 ramp from 0 to `high`, every value distinct enough to spot a wrong mapping."""
    ramp = np.linspace(0, high, height * width).reshape(height, width)
    return np.rint(ramp).astype(np.uint16)


@pytest.fixture()
def write_dicom(tmp_path: Path) -> Callable[[Dataset, str], Path]:
    """Save a dataset as a Part 10 file in tmp_path and return its path."""

    def write(ds: Dataset, name: str = "image.dcm") -> Path:
        path = tmp_path / name
        path.write_bytes(dicom_bytes(ds))
        return path

    return write


@pytest.fixture(scope="session")
def testdata() -> Callable[[str], Path]:
    """Path of a file from pydicom's own test files or pydicom-data, never downloaded."""

    def find(name: str) -> Path:
        found = get_testdata_file(name, download=False)
        assert found is not None, f"pydicom test file {name} is not installed"
        return Path(found)

    return find


@pytest.fixture(scope="session")
def decoded(testdata: Callable[[str], Path]) -> Callable[[str], DecodedImage]:
    """Decode a real test file once per session: the RG1 films take most of this suite's time."""
    return functools.cache(lambda name: decode_image(testdata(name)))


def read_raw(path: Path) -> np.ndarray:
    """The stored values as pydicom gives them, for tests that compare before scaling."""
    return pydicom.dcmread(path).pixel_array
