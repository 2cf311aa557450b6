"""Format detection from a file's first bytes; the extension is never trusted."""

from __future__ import annotations

# A DICOM Part 10 file has a 128-byte preamble, then these four bytes.
DICM_OFFSET = 128
DICM_MAGIC = b"DICM"
# Enough bytes for every check in this module.
HEAD_BYTES = 512

# Little-endian groups a DICOM stream without a preamble starts with: file meta (0002) or identifying (0008).
_BARE_GROUPS = (b"\x02\x00", b"\x08\x00")

_KNOWN_NON_IMAGES: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a zip archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"%PDF", "a PDF document"),
    (b"\x7fELF", "an executable"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-zip archive"),
)


def has_dicm_magic(head: bytes) -> bool:
    """True when `head` carries the Part 10 `DICM` marker after the 128-byte preamble."""
    return head[DICM_OFFSET : DICM_OFFSET + 4] == DICM_MAGIC


def looks_like_bare_dicom(head: bytes) -> bool:
    """True when `head` plausibly starts with a little-endian data element of group 0002 or 0008.

    Old or hand-written DICOM files may lack the preamble. This is strict on purpose: only such files are
    ever parsed with pydicom's `force=True`, so arbitrary files are never coerced into DICOM.
    """
    if len(head) < 8 or head[:2] not in _BARE_GROUPS:
        return False
    vr = head[4:6]
    if vr.isalpha() and vr.isupper():  # explicit VR: a two-letter VR follows the tag
        return True
    # Implicit VR: a 32-bit little-endian value length follows; a first element is short.
    length = int.from_bytes(head[4:8], "little")
    return length < 1024


def is_dicom(head: bytes) -> bool:
    """True when the first bytes of a file say DICOM: the `DICM` magic, or a bare group 0002/0008 start."""
    return has_dicm_magic(head) or looks_like_bare_dicom(head)


def describe_unknown(head: bytes) -> str:
    """A short reason for a file that is neither DICOM nor a raster image Pillow recognises."""
    if not head:
        return "empty file"
    for magic, what in _KNOWN_NON_IMAGES:
        if head.startswith(magic):
            return f"not an image: looks like {what}"
    if _is_text(head[:HEAD_BYTES]):
        return "not an image: looks like a text file"
    return "not an image: unrecognised file format"


def _is_text(sample: bytes) -> bool:
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(sample) - 3:  # not just a multi-byte character cut at the sample's end
            return False
        text = sample[: exc.start].decode("utf-8")
    return all(ch.isprintable() or ch.isspace() for ch in text)


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


def upload_kind(head: bytes) -> str | None:
    """The kind ("dicom", "png" or "jpeg") of a file from its first bytes, as the REST API accepts; else None."""
    if is_dicom(head):
        return "dicom"
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    return None
