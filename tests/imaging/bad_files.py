"""Files broken the ways real uploads and modalities break them, generated at test time (nothing big is committed):
every decode refusal the API, the CLI and the queue must answer with a stable reason."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from pydicom.uid import RLELossless

from tests.imaging.conftest import dicom_bytes, gradient, make_dataset


def png(pixels: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def claims_8000_with_1kb() -> bytes:
    ds = make_dataset(gradient())
    ds.Rows = ds.Columns = 8000
    ds.PixelData = b"\x01" * 1024
    return dicom_bytes(ds)


def empty_pixel_data() -> bytes:
    ds = make_dataset(gradient())
    ds.PixelData = b""
    return dicom_bytes(ds)


def text_report() -> bytes:  # a Basic Text SR: a DICOM object that is not an image
    ds = make_dataset(gradient())
    del ds.PixelData, ds.Rows, ds.Columns
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    return dicom_bytes(ds)


def mpeg2() -> bytes:
    ds = make_dataset(gradient())
    ds.compress(RLELossless)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
    return dicom_bytes(ds)


def dicom_too_many_pixels() -> bytes:
    ds = make_dataset(gradient())
    ds.Rows = ds.Columns = 20_000
    return dicom_bytes(ds)


def truncated_dicom() -> bytes:
    data = dicom_bytes(make_dataset(gradient()))
    return data[: len(data) - 500]


def truncated_png() -> bytes:
    data = png(gradient(300, 300).astype(np.uint8))
    return data[: len(data) // 2]


def corrupt_png() -> bytes:
    data = bytearray(png((gradient(300, 300) % 251).astype(np.uint8)))
    start = data.index(b"IDAT") + 40
    data[start : start + 64] = bytes(range(64))  # garbage inside the compressed stream
    return bytes(data)


def colour_png() -> bytes:
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[:, :32, 2] = 50
    return png(rgb)
