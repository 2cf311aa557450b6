"""A memory budget for decodes: each decode reserves what it will cost, estimated from the file's header before
any pixel is decoded, and waits briefly for room or is refused.

Decoding is far dearer than the file: a 200 KB PNG of 8,900 x 8,900 pixels peaks at about 2.3 GB, because the
decoders work on float64 copies of the full image. Measured peak RSS per pixel of `decode_bytes` (and what the API
does next: a model input or a PNG preview), on 16-Mpx images (benchmarks/decode_memory.py):
8-bit and 16-bit PNG, JPEG 29-30 B/px; RGB PNG 33 B/px; DICOM 16-bit 32 B/px, with a window 40 B/px (both with
the file's bytes already in memory, which the estimate adds separately). Since raster samples stay integers until
scaled, grey PNG and JPEG measure 22-24 B/px; the reserve is unchanged.

A decode given a target side (a search: the model's input; a preview: its size) is reduced on integer samples
(services.imaging.reduce) and costs far less: measured with `--target-side 128` on the same 16-Mpx images, grey PNG
and JPEG 4.0-6.0 B/px, RGB PNG 14.0, DICOM 4.3-8.4 (uncompressed, JPEG 2000, JPEG-LS). Its estimate is those
bytes per pixel of the file's own size plus the full rate on the reduced pixels (with `--target-side 768`, 8-21
B/px measured against 9-24 estimated).
"""

from __future__ import annotations

import io
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from services.config import DEFAULT_MAX_PIXELS
from services.errors import DecodeBusyError, ImageTooLargeError
from services.imaging.deflate import inflated_size
from services.imaging.files import max_file_bytes
from services.imaging.reasons import DecodeReason
from services.imaging.reduce import reduction_factors
from services.imaging.sniff import HEAD_BYTES, has_dicm_magic, is_dicom

# Bytes per pixel reserved, a little above the measured peaks (see the module docstring).
RASTER_GREY_BPP = 32
RASTER_COLOUR_BPP = 36
DICOM_BPP = 44
# Bytes per pixel of the file's own size that a reduced decode holds, a little above the measured peaks.
REDUCED_RASTER_GREY_BPP = 8
REDUCED_RASTER_COLOUR_BPP = 16
REDUCED_DICOM_BPP = 10
# The file's bytes are held twice while decoding: the upload itself and the parser's copy of the pixel data.
FILE_COPIES = 2


@dataclass(frozen=True)
class DecodeCost:
    """What the header declares and the bytes a decode of it is expected to peak at."""

    pixels: int
    bytes: int


def estimate_cost(data: bytes, *, target_side: int | None = None) -> DecodeCost:
    """The expected peak memory of decoding `data` (with `target_side`, as decode_bytes reduces it), from its
    header alone (nothing is decoded).

    A header that cannot be read costs only the file: the decoder will refuse it before decoding pixels.
    """
    floor = FILE_COPIES * len(data)
    if is_dicom(data[:HEAD_BYTES]):
        size, rows, columns = _dicom_size(data)
        bpp, reduced_bpp = DICOM_BPP, REDUCED_DICOM_BPP
    else:
        size, rows, columns, colour = _raster_size(data)
        bpp = RASTER_COLOUR_BPP if colour else RASTER_GREY_BPP
        reduced_bpp = REDUCED_RASTER_COLOUR_BPP if colour else REDUCED_RASTER_GREY_BPP
    if size is None:
        return DecodeCost(0, floor)
    down, across = reduction_factors(rows, columns, target_side)
    if down * across == 1:
        return DecodeCost(size, size * bpp + floor)
    return DecodeCost(size, size * reduced_bpp + math.ceil(size / (down * across)) * bpp + floor)


def _dicom_size(data: bytes) -> tuple[int | None, int, int]:
    """(samples to decode, rows, columns); rows and columns 0 where not known (no reduction is counted on)."""
    import pydicom

    bound = max_file_bytes(DEFAULT_MAX_PIXELS)
    inflated = inflated_size(data, bound)
    if inflated is not None:  # never parsed here: pydicom would inflate it whole first
        return (None if inflated > bound else max(1, inflated // DICOM_BPP)), 0, 0
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not has_dicm_magic(data), stop_before_pixels=True)
        rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
        bits_allocated = int(ds.get("BitsAllocated") or 0)
        syntax = getattr(ds.get("file_meta"), "TransferSyntaxUID", None)
        compressed = bool(syntax) and pydicom.uid.UID(str(syntax)).is_compressed
    except Exception:  # the decoder refuses it with the reason
        return None, 0, 0
    size = max(0, rows) * max(0, columns) * max(1, frames) * max(1, samples)
    if not compressed and size * bits_allocated // 8 > len(data):
        # Uncompressed pixels that cannot fit in the file: the decoder refuses them as truncated from the header
        # (a 2 KB file claiming 8000 x 8000), so they cost only the file, and are not refused as too large here.
        return None, 0, 0
    return size, max(0, rows), max(0, columns)


def _raster_size(data: bytes) -> tuple[int | None, int, int, bool]:
    """(pixels, rows, columns, colour)."""
    from PIL import Image

    from services.imaging.raster import RASTER_FORMATS

    try:
        with Image.open(io.BytesIO(data), formats=RASTER_FORMATS) as image:
            width, height = image.size
            grey = image.mode in ("1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B")
            return width * height, height, width, not grey
    except Image.DecompressionBombError:
        return None, 0, 0, False  # the decoder refuses it as too large
    except Exception:
        return None, 0, 0, False


class DecodeBudget:
    """At most `capacity_bytes` of decodes at once; a decode waits up to `wait_s` for room, then is refused.

    A decode that alone needs more than the whole budget is refused at once (ImageTooLargeError, 413); one that
    finds the budget taken for `wait_s` gets DecodeBusyError (503, retry later). `on_release(bytes)` is called as
    each reservation ends (the API counts them to give the memory back: services.api.heap).
    """

    def __init__(self, capacity_bytes: int, wait_s: float, *, on_release: Callable[[int], None] | None = None) -> None:
        self.capacity = capacity_bytes
        self.wait_s = wait_s
        self.on_release = on_release
        self._used = 0
        self._cond = threading.Condition()

    @property
    def used(self) -> int:
        with self._cond:
            return self._used

    @contextmanager
    def reserve(self, cost: DecodeCost, name: str = "upload") -> Iterator[None]:
        """Hold `cost.bytes` of the budget for the block (decoding and whatever uses the pixels next)."""
        need = cost.bytes
        if need > self.capacity:
            raise ImageTooLargeError(
                name,
                f"too large to decode here: {cost.pixels:,} pixels need about {_mb(need)} MB, over the server's "
                f"decode memory budget of {_mb(self.capacity)} MB",
                "Send a smaller image, or raise CXR_API_DECODE_MEMORY_MB if the machine has the memory.",
                code=DecodeReason.TOO_LARGE,
            )
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            while self._used + need > self.capacity:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DecodeBusyError(
                        f"the server is busy decoding other large images: this one needs about {_mb(need)} MB and "
                        f"{_mb(self.capacity - self._used)} MB of the {_mb(self.capacity)} MB decode budget is "
                        f"free",
                        retry_after_s=max(1, math.ceil(self.wait_s)),
                    )
                self._cond.wait(left)
            self._used += need
        try:
            yield
        finally:
            with self._cond:
                self._used -= need
                self._cond.notify_all()
            if self.on_release is not None:
                self.on_release(need)


def _mb(n: int) -> int:
    return math.ceil(n / 2**20)
