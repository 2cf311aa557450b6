"""DICOM -> grey pixels, carefully: BitsStored, Modality LUT, VOI LUT or window, MONOCHROME1 inversion.

Everything that can be refused from the header (frames, colour model, size, missing decoder) is refused before
any pixel data is decoded, so a decompression bomb costs nothing.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_fragmented_frames
from pydicom.pixels import get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from services.errors import DecodeError, ImageTooLargeError
from services.imaging.codestream import declared_size
from services.imaging.deflate import inflates_past
from services.imaging.dicom_meta import int_attr, read_meta, text_attr
from services.imaging.files import max_file_bytes
from services.imaging.jpeg2000 import decode_reduced, resolution_level
from services.imaging.reasons import DecodeReason, decoder_failure
from services.imaging.reduce import box_reduce, reduction_factors
from services.imaging.sniff import has_dicm_magic
from services.imaging.types import DecodedImage
from services.imaging.validate import (
    check_dimensions,
    refuse_colour,
    refuse_if_blank,
    scale_range,
)
from services.imaging.voi import to_unit

# JPEG 2000 transfer syntaxes whose frames may be decoded at a lower resolution level (services.imaging.jpeg2000).
# HTJ2K is left to pydicom: no HTJ2K file was at hand to test the reduced path on.
_J2K_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"})
_GREY = frozenset({"MONOCHROME1", "MONOCHROME2"})
_COLOUR = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "YBR_PARTIAL_422"})


def decode_dicom(
    data: bytes, name: str, *, max_pixels: int, min_side: int, target_side: int | None = None
) -> DecodedImage:
    """Decode one single-frame greyscale DICOM held in memory; refuse anything else with a DecodeError.

    With `target_side`, the pixels come back shrunk by whole factors (services.imaging.reduce): a JPEG 2000 frame
    is decoded at a lower resolution level, and the rest is box-reduced while the stored values go through the
    modality and VOI transforms, so no full-size float copy is made. `meta` keeps Rows and Columns.
    """
    ds, transfer_syntax, (photometric, samples, bits) = _checked(data, name, max_pixels=max_pixels, min_side=min_side)
    rows, columns = int(ds.Rows), int(ds.Columns)
    reduced = None
    if samples == 1 and str(transfer_syntax) in _J2K_SYNTAXES:
        reduced = _decode_reduced_j2k(ds, bits, resolution_level(reduction_factors(rows, columns, target_side)))
    raw, level_scale = reduced or (_decode_pixels(ds, name, transfer_syntax), 1)
    factors = reduction_factors(raw.shape[0], raw.shape[1], target_side)  # what is left after the codec's own

    if samples == 3:
        # Colour models carry rendered values: no modality or VOI transform applies.
        refuse_colour(name, raw, float(2**bits - 1))
        grey = box_reduce(raw, factors).mean(axis=-1, dtype=np.float64)
        refuse_if_blank(name, grey)
        pixels = scale_range(grey, 0.0, float(2**bits - 1))
    else:
        refuse_if_blank(name, raw)
        pixels = to_unit(raw, ds, factors)
        if photometric == "MONOCHROME1":  # MONOCHROME1 shows low values white; make bright mean dense
            pixels = 1.0 - pixels
    meta = read_meta(ds, rows, columns, str(transfer_syntax))
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    reduction = (level_scale * factors[0], level_scale * factors[1])
    return DecodedImage(pixels=pixels, meta=meta, reduction=reduction)


def read_dicom_values(data: bytes, name: str, *, max_pixels: int, min_side: int) -> tuple[Dataset, np.ndarray]:
    """The data set and its stored pixel values at full size, after every check `decode_dicom` makes: what a
    viewer that windows the real values needs (services.imaging.modality). Colour models come back as RGB."""
    ds, transfer_syntax, _ = _checked(data, name, max_pixels=max_pixels, min_side=min_side)
    raw = _decode_pixels(ds, name, transfer_syntax)
    refuse_if_blank(name, raw)
    return ds, raw


def _checked(data: bytes, name: str, *, max_pixels: int, min_side: int) -> tuple[Dataset, UID, tuple[str, int, int]]:
    """The data set, its transfer syntax and (photometric, samples, bits), after every check made before the
    pixels are decoded: header, decoder present, native length, frame size."""
    ds = _read_dataset(data, name, max_pixels=max_pixels)
    transfer_syntax = _transfer_syntax(ds)
    header = _check_header(ds, name, max_pixels=max_pixels, min_side=min_side)
    _check_decoder(name, transfer_syntax)
    _check_native_length(ds, name, transfer_syntax, header[1])
    _check_frame_size(ds, name, transfer_syntax, max_pixels=max_pixels)
    return ds, transfer_syntax, header


def _decode_reduced_j2k(ds: Dataset, bits: int, level: int) -> tuple[np.ndarray, int] | None:
    """(values, 2**level): the frame at a JPEG 2000 resolution level, or None (pydicom decodes it whole)."""
    if level < 1:
        return None
    try:
        frame = next(generate_fragmented_frames(ds.PixelData, number_of_frames=1))
    except Exception:  # malformed encapsulation: pydicom refuses it with its own reason
        return None
    signed = (int_attr(ds, "PixelRepresentation") or 0) == 1
    values = decode_reduced(b"".join(frame), level, bits_stored=bits, signed=signed)
    return None if values is None else (values, 1 << level)


def _read_dataset(data: bytes, name: str, *, max_pixels: int) -> Dataset:
    # `force` only for files the sniffer judged to be DICOM without a preamble.
    force = not has_dicm_magic(data)
    if inflates_past(data, max_file_bytes(max_pixels)):
        raise ImageTooLargeError(
            name,
            f"the deflated data set inflates to more than {max_file_bytes(max_pixels):,} bytes",
            "Raise CXR_MAX_PIXELS if the image is genuine.",
        )
    try:
        return pydicom.dcmread(io.BytesIO(data), force=force)
    except Exception as exc:  # pydicom raises many types on corrupt input; none may escape
        raise decoder_failure(name, "the DICOM file", exc) from exc


def _transfer_syntax(ds: Dataset) -> UID:
    """The dataset's transfer syntax; for a file without meta information, the encoding it was read with."""
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is None:
        file_meta = ds.file_meta = FileMetaDataset()
    uid = file_meta.get("TransferSyntaxUID")
    if uid:
        return UID(str(uid))
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if little is False:
        uid = ExplicitVRBigEndian
    else:
        uid = ImplicitVRLittleEndian if implicit in (True, None) else ExplicitVRLittleEndian
    file_meta.TransferSyntaxUID = uid  # pydicom needs it to decode the pixels
    return uid


def _check_header(ds: Dataset, name: str, *, max_pixels: int, min_side: int) -> tuple[str, int, int]:
    """Refuse from the header alone; return (photometric, samples per pixel, bits stored)."""
    if "PixelData" not in ds:
        _refuse_missing_pixels(ds, name)
    if _is_empty(ds, "PixelData"):
        raise DecodeError(name, "no pixel data: the Pixel Data element is empty", code=DecodeReason.NO_PIXEL_DATA)
    frames = int_attr(ds, "NumberOfFrames") or 1
    if frames > 1:
        raise DecodeError(
            name,
            f"multi-frame image ({frames} frames): only single images are supported",
            code=DecodeReason.UNSUPPORTED_IMAGE,
        )
    samples = int_attr(ds, "SamplesPerPixel") or 1
    photometric = (text_attr(ds, "PhotometricInterpretation") or "MONOCHROME2").upper()
    if photometric == "PALETTE COLOR":
        raise DecodeError(
            name,
            "palette colour image: only greyscale radiographs are supported",
            code=DecodeReason.UNSUPPORTED_IMAGE,
        )
    if not (samples == 1 and photometric in _GREY) and not (samples == 3 and photometric in _COLOUR):
        raise DecodeError(
            name, f"unsupported pixel layout: {samples} samples, {photometric}", code=DecodeReason.UNSUPPORTED_IMAGE
        )
    rows, columns = int_attr(ds, "Rows"), int_attr(ds, "Columns")
    if rows is None or columns is None:
        raise DecodeError(name, "Rows or Columns missing from the DICOM header", code=DecodeReason.CORRUPT)
    check_dimensions(name, rows, columns, max_pixels=max_pixels, min_side=min_side)
    bits_allocated = int_attr(ds, "BitsAllocated") or 0
    bits = int_attr(ds, "BitsStored") or bits_allocated
    if not 1 <= bits <= 32:
        raise DecodeError(name, f"unsupported BitsStored {bits}", code=DecodeReason.UNSUPPORTED_IMAGE)
    return photometric, samples, bits


def _check_decoder(name: str, transfer_syntax: UID) -> None:
    """Refuse a transfer syntax nothing installed can decode, naming the package that would."""
    label = f"{transfer_syntax.name} ({transfer_syntax})"
    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError:
        raise DecodeError(
            name, f"unsupported transfer syntax {label}", code=DecodeReason.UNSUPPORTED_TRANSFER_SYNTAX
        ) from None
    if not decoder.is_available:
        package = _decoder_package(transfer_syntax) or ", ".join(decoder.missing_dependencies)
        raise DecodeError(
            name,
            f"no decoder installed for {label}",
            f"Install {package}.",
            code=DecodeReason.UNSUPPORTED_TRANSFER_SYNTAX,
        )


def _decoder_package(transfer_syntax: UID) -> str | None:
    keyword = transfer_syntax.keyword
    if keyword.startswith(("JPEG2000", "HTJ2K")):
        return "pylibjpeg-openjpeg"
    if keyword.startswith("JPEGLS"):
        return "pylibjpeg-libjpeg (or pyjpegls)"
    if keyword.startswith("JPEG"):
        return "pylibjpeg-libjpeg"
    if keyword.startswith("RLE"):
        return "pylibjpeg-rle"
    return None


def _decode_pixels(ds: Dataset, name: str, transfer_syntax: UID) -> np.ndarray:
    """Stored values, masked to BitsStored and sign-extended by pydicom; colour models converted to RGB."""
    try:
        arr = ds.pixel_array
    except Exception as exc:  # truncated fragments, codec errors, length mismatches, out of memory
        raise decoder_failure(name, f"the {transfer_syntax.name} pixel data", exc) from exc
    expected_ndim = 3 if int_attr(ds, "SamplesPerPixel") == 3 else 2
    if arr.ndim != expected_ndim:
        raise DecodeError(name, f"unexpected pixel array shape {arr.shape}", code=DecodeReason.UNSUPPORTED_IMAGE)
    return arr


def _refuse_missing_pixels(ds: Dataset, name: str) -> None:
    """Tell a non-image object (SR, presentation state, RT plan) from an image cut short.

    pydicom stops quietly at the end of a truncated file, dropping the elements it could not read.
    """
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        raise DecodeError(name, "float pixel data is not supported", code=DecodeReason.UNSUPPORTED_IMAGE)
    file_meta = getattr(ds, "file_meta", Dataset())
    uid = text_attr(ds, "SOPClassUID") or text_attr(file_meta, "MediaStorageSOPClassUID")
    sop_class = UID(uid).name if uid else None
    if len(ds) == 0 or "Rows" in ds or (sop_class and "Image" in sop_class):
        raise DecodeError(name, "pixel data missing: the file is truncated or corrupt", code=DecodeReason.TRUNCATED)
    raise DecodeError(
        name, f"no pixel data: {sop_class or 'the DICOM object'} is not an image", code=DecodeReason.NO_PIXEL_DATA
    )


def _is_empty(ds: Dataset, keyword: str) -> bool:
    """True when the element is present with no value (pydicom reads it as None or b"")."""
    try:
        value = ds[keyword].value
    except Exception:  # an unreadable value is the decoder's to refuse, with its own reason
        return False
    return value is None or (isinstance(value, bytes | bytearray) and len(value) == 0)


def _check_native_length(ds: Dataset, name: str, transfer_syntax: UID, samples: int) -> None:
    """Refuse an uncompressed image whose pixel data is shorter than its header's Rows x Columns promise.

    Checked before decoding, so a header claiming 8000 x 8000 over 1 KB of data costs nothing.
    """
    if transfer_syntax.is_compressed:
        return
    rows, columns = int_attr(ds, "Rows") or 0, int_attr(ds, "Columns") or 0
    bits_allocated = int_attr(ds, "BitsAllocated") or 0
    expected = (rows * columns * samples * bits_allocated + 7) // 8
    try:
        actual = len(ds["PixelData"].value)
    except Exception:  # left to the decoder
        return
    if 0 < actual < expected:
        raise DecodeError(
            name,
            f"truncated: {actual:,} bytes of pixel data where the header's {columns}x{rows} needs {expected:,}",
            code=DecodeReason.TRUNCATED,
        )


def _check_frame_size(ds: Dataset, name: str, transfer_syntax: UID, *, max_pixels: int) -> None:
    """Refuse a compressed frame whose own header (JPEG or JPEG-LS SOF, JPEG 2000 SIZ) declares another size than
    Rows and Columns. The decoders allocate what the codestream declares: a 30 KB frame under a 256 x 256 header
    that says 30000 x 30000 cost gigabytes before it failed, and the API's decode budget counts Rows x Columns."""
    if not transfer_syntax.is_encapsulated:
        return
    try:
        first = next(generate_fragmented_frames(ds.PixelData, number_of_frames=1))[0]
    except Exception:  # malformed encapsulation: the decoder refuses it with its own reason
        return
    size = declared_size(first)
    if size is None:
        return
    rows, columns = int_attr(ds, "Rows") or 0, int_attr(ds, "Columns") or 0
    frame_rows, frame_columns = size
    if frame_rows in (0, rows) and frame_columns == columns:  # rows 0: a JPEG DNL marker gives them later
        return
    if frame_rows * frame_columns > max_pixels:
        raise ImageTooLargeError(
            name,
            f"too many pixels: the compressed data declares {frame_columns}x{frame_rows}, over the limit of "
            f"{max_pixels:,}",
        )
    raise DecodeError(
        name,
        f"corrupt: the compressed data declares {frame_columns}x{frame_rows} pixels where the header says "
        f"{columns}x{rows}",
        code=DecodeReason.CORRUPT,
    )
