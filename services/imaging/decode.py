"""The entry points: a path or bytes in, one grey image out, or a DecodeError saying why not."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from services.errors import DecodeError
from services.imaging.dicom import decode_dicom
from services.imaging.raster import decode_raster
from services.imaging.sniff import HEAD_BYTES, is_dicom
from services.imaging.types import DecodedImage

DEFAULT_MAX_PIXELS = 80_000_000
DEFAULT_MIN_SIDE = 32
# Bytes a file may hold per allowed pixel (32-bit samples, times two for slack) plus room for headers; larger
# files are refused before they are read into memory.
_BYTES_PER_PIXEL = 8
_HEADER_ALLOWANCE = 64 * 1024 * 1024


def decode_image(
    path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = DEFAULT_MIN_SIDE
) -> DecodedImage:
    """Decode the file at `path` (DICOM or raster, whatever its extension) into a grey image."""
    name = str(path)
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise DecodeError(name, "is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise DecodeError(name, "not a regular file")
        if info.st_size > max_pixels * _BYTES_PER_PIXEL + _HEADER_ALLOWANCE:
            raise DecodeError(name, f"file too large ({info.st_size / 2**20:,.0f} MiB) for the pixel limit")
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise DecodeError(name, "file not found") from None
    except PermissionError:
        raise DecodeError(name, "permission denied") from None
    except IsADirectoryError:
        raise DecodeError(name, "is a directory, not a file") from None
    except OSError as exc:
        raise DecodeError(name, f"cannot read the file ({exc.strerror or exc})") from None
    except ValueError:  # e.g. an embedded NUL byte
        raise DecodeError(name, "invalid path") from None
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
        raise DecodeError(name, "empty file")
    if is_dicom(data[:HEAD_BYTES]):
        return decode_dicom(data, name, max_pixels=max_pixels, min_side=min_side)
    return decode_raster(data, name, max_pixels=max_pixels, min_side=min_side)
