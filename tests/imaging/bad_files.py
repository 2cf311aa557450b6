"""Files broken the ways real uploads and modalities break them, generated at test time (nothing big is committed):
every decode refusal the API, the CLI and the queue must answer with a stable reason."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

from services.imaging.sniff import PNG_MAGIC
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


# Decompression bombs and lying headers: a few hundred bytes that declare far more pixels than they hold. The
# size sits in the header field each format's decoder sizes its buffers by.


def png_claiming(width: int, height: int, rows: int = 4) -> bytes:
    """A tiny greyscale PNG whose IHDR says `width` x `height` over compressed data for only `rows` rows."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey, no interlace
    scanlines = zlib.compress(bytes(rows * (width + 1)), 9)
    return PNG_MAGIC + chunk(b"IHDR", ihdr) + chunk(b"IDAT", scanlines) + chunk(b"IEND", b"")


def lying_png(claimed: int = 512, actual: int = 64) -> bytes:
    """A PNG whose IHDR says `claimed` x `claimed` while its data holds a real `actual` x `actual` image."""
    data = bytearray(png((gradient(actual, actual) % 251).astype(np.uint8)))
    struct.pack_into(">II", data, 16, claimed, claimed)  # IHDR's width and height, then its CRC
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def textured(height: int = 256, width: int = 256) -> np.ndarray:
    """An 8-bit grey image with structure at every scale (not blank, not a plain ramp)."""
    y, x = np.mgrid[0:height, 0:width]
    return ((x * 3 + y * 5 + (x * y) % 17) % 256).astype(np.uint8)


def jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# The frame headers of JPEG (SOF0..SOF15, less DHT, JPG and DAC) and JPEG-LS (SOF55).
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})


def _set_sof_size(codestream: bytes, width: int, height: int) -> bytes:
    """Rewrite the frame header (SOF0..SOF15 or JPEG-LS SOF55) of a JPEG or JPEG-LS codestream."""
    data = bytearray(codestream)
    at = next(i for i in range(2, len(data) - 9) if data[i] == 0xFF and data[i + 1] in _SOF_MARKERS)
    struct.pack_into(">HH", data, at + 5, height, width)
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real 256 x 256 JPEG whose SOF says `width` x `height`."""
    return _set_sof_size(jpeg(textured()), width, height)


def j2k(pixels: np.ndarray) -> bytes:
    """A JPEG 2000 codestream (no JP2 wrapper, as DICOM carries it), lossless."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG2000", no_jp2=True, irreversible=False)
    return buf.getvalue()


def j2k_claiming(width: int, height: int) -> bytes:
    """A real 256 x 256 JPEG 2000 codestream whose SIZ says the image is `width` x `height` (its one tile too)."""
    data = bytearray(j2k(textured()))
    siz = data.index(b"\xff\x51")
    struct.pack_into(">II", data, siz + 6, width, height)  # Xsiz, Ysiz (image offsets XOsiz, YOsiz stay 0)
    return bytes(data)


def _encapsulated_dicom(frame: bytes, transfer_syntax: str, pixels: np.ndarray) -> bytes:
    """A CR whose header describes `pixels` (Rows, Columns, 8 bits) and whose pixel data is `frame`, encapsulated."""
    ds = make_dataset(pixels)
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return dicom_bytes(ds)


def dicom_j2k(pixels: np.ndarray | None = None) -> bytes:
    """A good JPEG 2000 lossless CR."""
    pixels = textured() if pixels is None else pixels
    return _encapsulated_dicom(j2k(pixels), JPEG2000Lossless, pixels)


def dicom_j2k_claiming(width: int, height: int) -> bytes:
    """A CR whose header says 256 x 256 while its JPEG 2000 codestream says `width` x `height`: the decoder sizes
    its buffers by the codestream."""
    return _encapsulated_dicom(j2k_claiming(width, height), JPEG2000Lossless, textured())


def dicom_jpeg_claiming(width: int, height: int) -> bytes:
    """A CR whose header says 256 x 256 while its JPEG baseline SOF says `width` x `height`."""
    return _encapsulated_dicom(jpeg_claiming(width, height), JPEGBaseline8Bit, textured())


def dicom_claiming(side: int) -> bytes:
    """A CR whose Rows and Columns say `side` over a 64 x 80 image's pixel data."""
    ds = make_dataset(gradient())
    ds.Rows = ds.Columns = side
    return dicom_bytes(ds)


def truncated_jpeg() -> bytes:
    data = jpeg(textured())
    return data[: len(data) // 2]


def multiframe_dicom(frames: int = 3) -> bytes:
    """A CR of `frames` frames (NumberOfFrames and the pixel data agree)."""
    stack = np.stack([gradient() + 10 * i for i in range(frames)])
    ds = make_dataset(gradient(), NumberOfFrames=frames)
    ds.PixelData = stack.astype(np.uint16).tobytes()
    return dicom_bytes(ds)


def wrong_bits_allocated() -> bytes:
    """BitsAllocated 16 over pixel data of one byte per pixel (an 8-bit image mislabelled)."""
    pixels = textured()
    ds = make_dataset(pixels)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    return dicom_bytes(ds)


def grey16_png() -> bytes:
    """A 16-bit greyscale PNG using the whole range."""
    return png(np.linspace(0, 65535, 256 * 256).reshape(256, 256).astype(np.uint16))


def grey16_dicom() -> bytes:
    """A 16-bit (12 bits stored) CR with texture."""
    pixels = textured().astype(np.uint16) * 16
    return dicom_bytes(make_dataset(pixels, BitsStored=12, HighBit=11))


def colour_jpeg() -> bytes:
    """A JPEG in strong colours (a photograph, a coloured overlay): not a radiograph."""
    rgb = np.zeros((128, 128, 3), np.uint8)
    rgb[..., 0] = textured(128, 128)
    rgb[:64, :, 2] = 220
    return jpeg(rgb)


def grey_as_rgb_jpeg(grey_jpeg: bytes) -> bytes:
    """A grey film re-saved as a three-channel JPEG (the channels agree up to compression noise)."""
    with Image.open(io.BytesIO(grey_jpeg)) as image:
        rgb = np.asarray(image.convert("RGB"))
    return jpeg(rgb, quality=95)


def zip_archive() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("report.txt", "patient: DOE^JOHN\nfinding: none\n")
    return buf.getvalue()


def deflated_bomb(inflated_mb: int = 160) -> bytes:
    """A Deflated Explicit VR Little Endian CR of 64 x 64 whose data set inflates to `inflated_mb` MB (a private
    OB element of zeros), compressed in a stream so building it never holds the inflated bytes."""
    ds = make_dataset(gradient(64, 64))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    whole = io.BytesIO()
    ds.save_as(whole, enforce_file_format=True)
    meta_end = 132 + 12 + struct.unpack_from("<I", whole.getvalue(), 140)[0]
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)  # the data set alone, as it is before deflating
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    size = inflated_mb * 2**20
    # a private element after the pixel data (tags ascend), all zeros
    parts = [packer.compress(body.getvalue()), packer.compress(struct.pack("<HH2sHI", 0x7FE1, 0x1010, b"OB", 0, size))]
    zeros = bytes(2**20)
    parts += [packer.compress(zeros) for _ in range(inflated_mb)]
    parts.append(packer.flush())
    return whole.getvalue()[:meta_end] + b"".join(parts)
