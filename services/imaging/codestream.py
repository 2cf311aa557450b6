"""The image size a compressed frame declares in its own header: the SOF of JPEG and JPEG-LS, the SIZ of JPEG 2000.

A DICOM decoder sizes its buffers by the codestream, not by the DICOM header: a 30 KB frame under Rows and Columns
of 256 whose SOF says 30000 x 30000 made pylibjpeg allocate gigabytes before failing. Reading the declared size
first lets the DICOM decoder refuse such a frame before any pixel is decoded. Parsing is bounded by the frame's
length and never raises.
"""

from __future__ import annotations

import struct

# JPEG frame headers (SOF0..SOF15, less DHT C4, JPG C8 and DAC CC) and the JPEG-LS one (SOF55).
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})
# Markers without a length field: TEM, RST0..RST7, SOI, EOI.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xDA)})
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def declared_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) that a JPEG, JPEG-LS or JPEG 2000 frame (raw, or wrapped in a JP2 file) declares; None
    for any other encoding or a header that cannot be read (the decoder then refuses the frame itself)."""
    if frame.startswith(b"\xff\xd8"):
        return _jpeg_size(frame)
    if frame.startswith(_JP2_SIGNATURE):
        start = _jp2_codestream(frame)
        return None if start is None else _j2k_size(frame, start)
    if frame.startswith(_J2K_SOC_SIZ):
        return _j2k_size(frame, 0)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte before a marker
            at += 1
            continue
        if marker in _STANDALONE:
            at += 2
            continue
        if marker in _SOF:
            if at + 9 > len(data):
                return None
            rows, columns = struct.unpack_from(">HH", data, at + 5)
            return rows, columns
        if marker == 0xDA:  # start of scan before any frame header: not a valid JPEG
            return None
        (length,) = struct.unpack_from(">H", data, at + 2)
        if length < 2:
            return None
        at += 2 + length
    return None


def _j2k_size(data: bytes, start: int) -> tuple[int, int] | None:
    """From the SIZ segment: the reference grid less the image offset (Ysiz - YOsiz, Xsiz - XOsiz)."""
    if data[start : start + 4] != _J2K_SOC_SIZ or start + 24 > len(data):
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", data, start + 8)
    if xosiz > xsiz or yosiz > ysiz:
        return None
    return ysiz - yosiz, xsiz - xosiz


def _jp2_codestream(data: bytes) -> int | None:
    """The offset of the contiguous codestream box's contents ('jp2c') in a JP2 file."""
    at = 0
    while at + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, at)
        header = 8
        if length == 1:  # a 64-bit extended length follows
            if at + 16 > len(data):
                return None
            (length,) = struct.unpack_from(">Q", data, at + 8)
            header = 16
        if kind == b"jp2c":
            return at + header
        if length == 0 or length < header:  # 0: the box runs to the end of the file
            return None
        at += length
    return None
