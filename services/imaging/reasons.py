"""The stable reason codes of a refused decode, and the one place a decoder's own exception becomes a DecodeError.

Clients switch on the code (the REST API returns it as `reason`); the sentence in `DecodeError.reason` is for
people, and the decoder's exception text goes to `DecodeError.detail`, which only logs show.
"""

from __future__ import annotations

from enum import StrEnum

from services.errors import DecodeError


class DecodeReason(StrEnum):
    """Why a file was not decoded. The values are part of the API: add codes, never rename one."""

    NOT_AN_IMAGE = "not_an_image"  # empty, text, an archive, a format we do not read
    TRUNCATED = "truncated"  # the data ends before the image does
    CORRUPT = "corrupt"  # the header or the compressed data is malformed
    NO_PIXEL_DATA = "no_pixel_data"  # a DICOM object that is not an image (SR, RT plan) or carries no pixels
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"  # a DICOM encoding nothing installed decodes
    UNSUPPORTED_IMAGE = "unsupported_image"  # colour, palette, multi-frame, float or odd pixel layouts
    TOO_LARGE = "too_large"  # more pixels than CXR_MAX_PIXELS, or more memory than the decode budget
    TOO_SMALL = "too_small"  # shorter side under CXR_MIN_SIDE
    BLANK = "blank"  # every pixel equal
    OUT_OF_MEMORY = "out_of_memory"  # the machine ran out of memory while decoding (the server's state)
    UNREADABLE = "unreadable"  # a path that is missing, not a regular file or not readable
    CANNOT_DEIDENTIFY = "cannot_deidentify"  # de-identification is on and the file says its pixels carry text


def decoder_failure(name: str, what: str, exc: BaseException, *, truncated: bool = False) -> DecodeError:
    """A DecodeError for an exception a decoder raised on `what` ("the PNG data"): out of memory, truncated (when
    the caller or the exception's text says so) or corrupt; the exception's text goes to `detail` only."""
    detail = describe_exception(exc)
    if isinstance(exc, MemoryError):
        return DecodeError(name, f"not enough memory to decode {what}", code=DecodeReason.OUT_OF_MEMORY)
    if truncated or "truncated" in detail.lower() or "less than expected" in detail.lower():
        return DecodeError(name, f"{what} is truncated", code=DecodeReason.TRUNCATED, detail=detail)
    return DecodeError(name, f"{what} is corrupt or truncated", code=DecodeReason.CORRUPT, detail=detail)


def describe_exception(exc: BaseException) -> str:
    """A one-line, bounded description of a decoder's exception, for a DecodeError's `detail` (logs only)."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    text = text if len(text) <= 120 else text[:117] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
