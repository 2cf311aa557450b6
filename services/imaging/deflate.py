"""Deflated DICOM (Deflated Explicit VR Little Endian): a data set compressed whole with zlib, which pydicom inflates
whole before reading a single element. A 212 KB file can inflate to 200 MB (and 475 MB of memory) before any
size check sees it. `inflates_past` inflates at most `limit` + 1 bytes to tell, without keeping them; every place
that parses DICOM bytes (decode, the API's cost estimate, the receiver's and the puller's header read) asks first.
"""

from __future__ import annotations

import struct
import zlib

DEFLATED = b"1.2.840.10008.1.2.1.99"
_PREAMBLE = 128 + 4  # the preamble and "DICM"
_CHUNK = 1 << 20


def inflates_past(data: bytes, limit: int) -> bool:
    """True when `data` is a deflated Part 10 file whose data set inflates to more than `limit` bytes (or does not
    inflate at all: it is then no smaller a problem). False for anything else, at the cost of one `in` test."""
    size = inflated_size(data, limit)
    return size is not None and size > limit


def inflated_size(data: bytes, limit: int) -> int | None:
    """The inflated size of a deflated Part 10 file's data set, counted up to just past `limit` (limit + 1 or
    more means "over"; a stream that does not inflate counts as over); None when `data` is not deflated."""
    head = data[: _PREAMBLE + 4096]
    if DEFLATED not in head or head[128:132] != b"DICM":
        return None
    offset = _meta_end(data)
    if offset is None:
        return None  # not a file meta the parser will get past either: it refuses the file itself
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    produced, pending = 0, data[offset:]
    try:
        while pending and produced <= limit:
            produced += len(inflater.decompress(pending, _CHUNK))
            pending = inflater.unconsumed_tail
    except zlib.error:
        return limit + 1
    return produced


def _meta_end(data: bytes) -> int | None:
    """Where the data set starts: after (0002,0000) FileMetaInformationGroupLength's value."""
    start = _PREAMBLE
    if data[start : start + 6] != b"\x02\x00\x00\x00UL" or len(data) < start + 12:
        return None
    (length,) = struct.unpack_from("<I", data, start + 8)
    end = start + 12 + length
    return end if end <= len(data) else None
