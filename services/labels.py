"""The one check a label passes wherever it enters (`POST /v1/index`, a manifest row, a folder name given as a
label): letters, digits, `_`, `-`, `.` and spaces, 1 to 64 characters once trimmed. A label is shown on every
screen and used in filters; markup or control characters have no business in it."""

from __future__ import annotations

import re

from services.errors import CxrError

LABEL_MAX = 64
_LABEL_RE = re.compile(r"[\w .-]+")  # \w: letters and digits of any script, and "_"


class LabelError(CxrError):
    """A label with characters or a length that labels may not have."""

    default_hint = "Use letters, digits, '_', '-', '.' and spaces, 1-64 characters (e.g. 'covid19', 'normal')."


def check_label(label: str) -> str:
    """`label` trimmed, or LabelError saying what is wrong with it."""
    text = str(label).strip()
    if not text:
        raise LabelError("the label is empty")
    if len(text) > LABEL_MAX:
        raise LabelError(f"the label is {len(text)} characters long; at most {LABEL_MAX} are allowed")
    if not _LABEL_RE.fullmatch(text):
        bad = sorted({c for c in text if not _LABEL_RE.fullmatch(c)})
        shown = ", ".join(repr(c) for c in bad[:5])
        raise LabelError(f"the label {text[:64]!r} has characters labels may not have: {shown}")
    return text
