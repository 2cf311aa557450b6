"""An uploaded image: read within the size limit, sniffed by its magic bytes, decoded behind the pixel guard, and
optionally cropped to a query region.

Nothing here trusts the client: not its Content-Type, not its file name (never used), not its declared length.
The decoder checks the declared width x height against CXR_MAX_PIXELS before any pixel is decoded, so a tiny
file that claims a 100000 x 100000 image costs nothing (413). Every decode holds its estimated memory in the app's
decode budget (CXR_API_DECODE_MEMORY_MB) while its pixels are in use: more than the whole budget is a 413, a budget
taken by other decodes a 503 with Retry-After after a short wait (CXR_API_DECODE_WAIT_S).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from fastapi import HTTPException, Request, UploadFile

from services.config import Settings
from services.errors import ImageTooLargeError
from services.imaging import DecodedImage, decode_bytes
from services.imaging.budget import DecodeBudget, estimate_cost
from services.imaging.sniff import HEAD_BYTES, describe_unknown, upload_kind

_CHUNK = 1 << 20
ACCEPTED = "DICOM, PNG or JPEG"


@dataclass(frozen=True)
class Upload:
    """The bytes of one accepted upload, what they are, and their SHA-256."""

    data: bytes
    kind: str  # "dicom" | "png" | "jpeg"
    sha256: str


async def read_upload(settings: Settings, file: UploadFile) -> Upload:
    """The upload's bytes in chunks up to the limit (413), then its type by magic bytes (415)."""
    limit = settings.api_max_upload_mb * 2**20
    parts: list[bytes] = []
    size = 0
    while chunk := await file.read(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"the upload is larger than the limit of {settings.api_max_upload_mb} MiB")
        parts.append(chunk)
    data = b"".join(parts)
    kind = upload_kind(data[:HEAD_BYTES])
    if kind is None:
        raise HTTPException(415, f"unsupported file: {describe_unknown(data[:HEAD_BYTES])}; send {ACCEPTED}")
    return Upload(data, kind, hashlib.sha256(data).hexdigest())


@contextmanager
def decoded_upload(
    upload: Upload, settings: Settings, budget: DecodeBudget, *, target_side: int | None = None
) -> Iterator[DecodedImage]:
    """The decoded upload, its estimated memory held in `budget` until the block ends (use the pixels inside it).
    `target_side` (the model's input side, a preview's) allows a reduced decode, which also costs less.

    DecodeError (422), ImageTooLargeError (413: the pixel guard or the whole budget), DecodeBusyError (503).
    """
    with reserved_decode(upload.data, settings, budget, target_side=target_side):
        yield decode_bytes(
            upload.data, "upload", max_pixels=settings.max_pixels, min_side=settings.min_side, target_side=target_side
        )


@contextmanager
def reserved_decode(
    data: bytes, settings: Settings, budget: DecodeBudget, *, target_side: int | None = None, name: str = "upload"
) -> Iterator[None]:
    """Hold a decode of `data`'s estimated memory in `budget` for the block: the pixel guard first (413), then
    the budget (413 beyond all of it, 503 while others hold it)."""
    cost = estimate_cost(data, target_side=target_side)
    if cost.pixels > settings.max_pixels:  # the pixel guard speaks first: its limit and hint are the ones that apply
        raise ImageTooLargeError(
            name,
            f"too many pixels: {cost.pixels:,} is over the limit of {settings.max_pixels:,}",
            "Raise CXR_MAX_PIXELS if the image is genuine.",
        )
    with budget.reserve(cost, name):
        yield


async def single_file_part(request: Request) -> None:
    """Refuse a form with several `file` parts (422) on routes that take one image, rather than use the last."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        return
    count = len((await request.form()).getlist("file"))  # the form FastAPI already parsed (Starlette caches it)
    if count > 1:
        raise HTTPException(422, f"send one image per request: the form has {count} `file` parts")


def parse_crop(text: str | None) -> tuple[float, float, float, float] | None:
    """`x0,y0,x1,y1`: four numbers, all within [0, 1] for fractions of the width and height, else pixels."""
    if text is None or not text.strip():
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or not all(v == v and abs(v) != float("inf") for v in values):
        raise HTTPException(422, f"crop must be four numbers x0,y0,x1,y1, got {text!r}")
    x0, y0, x1, y1 = values
    if x0 >= x1 or y0 >= y1 or min(values) < 0:
        raise HTTPException(422, f"crop {text!r} is empty or negative: it needs 0 <= x0 < x1 and 0 <= y0 < y1")
    return x0, y0, x1, y1


def crop_box(crop: tuple[float, float, float, float], height: int, width: int) -> tuple[int, int, int, int]:
    """The crop in whole pixels (left, top, right, bottom), clamped to the image."""
    x0, y0, x1, y1 = crop
    if max(crop) <= 1.0:  # fractions of the image
        x0, x1, y0, y1 = x0 * width, x1 * width, y0 * height, y1 * height
    left, top = max(0, int(round(x0))), max(0, int(round(y0)))
    right, bottom = min(width, int(round(x1))), min(height, int(round(y1)))
    if right <= left or bottom <= top:
        raise HTTPException(422, f"crop {list(crop)} lies outside the {width}x{height} image")
    return left, top, right, bottom


def apply_crop(decoded: DecodedImage, crop: tuple[float, float, float, float], min_side: int) -> DecodedImage:
    """The query region as an image of its own (the crop is embedded instead of the whole film)."""
    height, width = decoded.pixels.shape
    left, top, right, bottom = crop_box(crop, height, width)
    if min(right - left, bottom - top) < min_side:
        raise HTTPException(
            422, f"the crop is {right - left}x{bottom - top} px; its shorter side must be at least {min_side} px"
        )
    pixels = decoded.pixels[top:bottom, left:right].copy()
    return replace(decoded, pixels=pixels)
