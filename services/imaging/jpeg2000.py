"""A JPEG 2000 frame decoded at a lower resolution level: OpenJPEG (through Pillow) skips the finer wavelet levels,
so a 2,000 px CR wanted at 256 px costs a fraction of a full decode, in time and in memory.

pylibjpeg-openjpeg 2.6, pydicom's decoder, has no option for it; Pillow's JPEG 2000 plugin does (`reduce`). Only
the simple, common case takes this path: one component, no image offset, a precision and signedness that agree
with BitsStored and PixelRepresentation. Anything else, or any failure here, returns None and the caller decodes
the whole frame with pydicom, which also words the reason when the data is bad.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image

# The coarsest level used. The coarser the level, the more its low-pass differs from a box average: at 128 px,
# on the pydicom-data CRs and copies upscaled to 2,100-3,200 px, the two trained headline models' embeddings stayed
# at cosine >= 0.99993 to a full decode's with level 1 where 2 divides the box factors, 0.9996 with level 2 and
# 0.9985 with level 3; the label+source model's at 0.9995 with level 1 on RG1's odd factors (7 x 7)
# (benchmarks/decode.py measures it). All but level 3 pass the 0.999 tolerance, and level 1 alone already cuts a
# 2,000 px CR's decode about 4x.
MAX_LEVEL = 1
_SOC_SIZ = b"\xff\x4f\xff\x51"
_COD = 0xFF52
_SOT = 0xFF90


@dataclass(frozen=True)
class J2kHeader:
    """What the main header of a raw codestream says about its samples and wavelet levels."""

    rows: int
    columns: int
    components: int
    precision: int
    signed: bool
    offset: bool  # a non-zero image offset on the reference grid
    levels: int  # decomposition levels in the default coding style (COD)


def read_header(frame: bytes) -> J2kHeader | None:
    """The SIZ and COD of a raw codestream (not a JP2 file); None when they cannot be read."""
    if not frame.startswith(_SOC_SIZ) or len(frame) < 42:
        return None
    (lsiz,) = struct.unpack_from(">H", frame, 4)
    xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", frame, 8)
    (components,) = struct.unpack_from(">H", frame, 40)
    if components < 1 or 42 + 3 * components > len(frame) or xosiz > xsiz or yosiz > ysiz:
        return None
    ssiz = frame[42]
    at, levels = 4 + lsiz, None
    while at + 4 <= len(frame):  # the marker segments of the main header, up to the first tile
        marker, length = struct.unpack_from(">HH", frame, at)
        if marker == _SOT or length < 2:
            break
        if marker == _COD and at + 10 <= len(frame):
            levels = frame[at + 9]  # after the marker, Lcod (2 bytes), Scod (1) and SGcod (4): SPcod's levels
        at += 2 + length
    if levels is None:
        return None
    return J2kHeader(
        rows=ysiz - yosiz,
        columns=xsiz - xosiz,
        components=components,
        precision=(ssiz & 0x7F) + 1,
        signed=bool(ssiz & 0x80),
        offset=bool(xosiz or yosiz),
        levels=levels,
    )


def resolution_level(factors: tuple[int, int]) -> int:
    """The resolution level to decode at before the box reduction by (rows, columns) `factors` a full decode
    would take: the largest, up to MAX_LEVEL, whose scale 2**level is at most the smaller factor. The caller
    box-reduces the level's image by the factors its own size gives (services.imaging.reduce), so what differs
    from a full decode is the wavelet's low-pass in place of part of the box. An odd factor (a 1,841 x 1,955 CR
    wanted at 128 px: 7 x 7) still takes a level; requiring 2**level to divide both factors, as before, decoded
    such films whole (benchmarks/decode.py times both)."""
    level = 0
    while level < MAX_LEVEL and (2 << level) <= min(factors):
        level += 1
    return level


def decode_reduced(frame: bytes, level: int, *, bits_stored: int, signed: bool) -> np.ndarray | None:
    """The stored values of a greyscale frame decoded at resolution `level` (1: half size, 2: quarter...), as
    pydicom gives them at full size; None when the frame does not take this path (see the module docstring)."""
    header = read_header(frame)
    if level < 1 or header is None or header.components != 1 or header.offset or header.levels < level:
        return None
    if header.precision != bits_stored or header.signed != signed or header.precision > 16:
        return None
    try:
        return _decode_level(frame, header, level)
    except Exception:  # noqa: BLE001 - a full decode follows and words the reason
        return None


def _decode_level(frame: bytes, header: J2kHeader, level: int) -> np.ndarray | None:
    scale = 1 << level
    rows, columns = -(-header.rows // scale), -(-header.columns // scale)  # OpenJPEG's size at that level
    with Image.open(io.BytesIO(frame), formats=["JPEG2000"]) as image:
        image.reduce = level
        image.load()
        samples = np.asarray(image)
    if samples.shape != (rows, columns):  # Pillow sizes a level by rounding, OpenJPEG by the ceiling
        return None
    # Pillow scales samples up to its 8- or 16-bit mode and stores signed ones offset by half the range.
    shift = 8 * samples.dtype.itemsize - header.precision
    values = samples >> shift if shift else samples
    if not header.signed:
        return values
    dtype = np.int8 if samples.dtype.itemsize == 1 else np.int16
    return (values.astype(np.int32) - (1 << (header.precision - 1))).astype(dtype)
