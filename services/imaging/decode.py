"""The entry points: a path or bytes in, one grey image out, or a DecodeError saying why not."""

from __future__ import annotations

from pathlib import Path

from services.config import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE
from services.errors import DecodeError
from services.imaging.dicom import decode_dicom
from services.imaging.files import max_file_bytes, read_regular_file
from services.imaging.raster import decode_raster
from services.imaging.reasons import DecodeReason, decoder_failure
from services.imaging.sniff import HEAD_BYTES, is_dicom
from services.imaging.types import DecodedImage


# Bytes a file may hold per allowed pixel (32-bit samples, times two for slack) plus room for headers; larger
# files are refused before they are read into memory.
def decode_image(
    path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = DEFAULT_MIN_SIDE
) -> DecodedImage:
    """Decode the file at `path` (DICOM or raster, whatever its extension) into a grey image."""
    name = str(path)
    data = read_regular_file(path, max_file_bytes(max_pixels))
    return decode_bytes(data, name, max_pixels=max_pixels, min_side=min_side)


def decode_bytes(
    data: bytes,
    name: str = "<upload>",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
) -> DecodedImage:
    """Decode an in-memory file (an upload, a PACS payload); `name` only labels errors."""
    if not data:
        raise DecodeError(name, "empty file", code=DecodeReason.NOT_AN_IMAGE)
    try:
        if is_dicom(data[:HEAD_BYTES]):
            return decode_dicom(data, name, max_pixels=max_pixels, min_side=min_side)
        return decode_raster(data, name, max_pixels=max_pixels, min_side=min_side)
    except DecodeError:
        raise
    except Exception as exc:  # a path the decoders did not foresee: still a DecodeError, never a 500
        raise decoder_failure(name, "the file", exc) from exc
