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


def decode_image(
    path: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    target_side: int | None = None,
) -> DecodedImage:
    """Decode the file at `path` (DICOM or raster, whatever its extension) into a grey image."""
    name = str(path)
    data = read_regular_file(path, max_file_bytes(max_pixels))
    return decode_bytes(data, name, max_pixels=max_pixels, min_side=min_side, target_side=target_side)


def decode_bytes(
    data: bytes,
    name: str = "<upload>",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    target_side: int | None = None,
) -> DecodedImage:
    """Decode an in-memory file (an upload, a PACS payload); `name` only labels errors.

    `target_side` is the side the caller will resize the pixels to (the model's input, a preview): the decoder
    may then return them shrunk by a whole factor, each side still at least twice `target_side`, which is far
    cheaper for a large film and leaves `to_model_input`'s result as a full decode gives it (services.imaging
    .reduce). `meta` always holds the file's own size. None: full size, for callers that need every pixel (crops).
    """
    if not data:
        raise DecodeError(name, "empty file", code=DecodeReason.NOT_AN_IMAGE)
    decoder = decode_dicom if is_dicom(data[:HEAD_BYTES]) else decode_raster
    try:
        return decoder(data, name, max_pixels=max_pixels, min_side=min_side, target_side=target_side)
    except DecodeError:
        raise
    except Exception as exc:  # a path the decoders did not foresee: still a DecodeError, never a 500
        raise decoder_failure(name, "the file", exc) from exc
