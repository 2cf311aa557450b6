"""An indexed point's pixels: the ONE path from a stored payload to its image.

A payload holds no path, only an opaque `source_ref` (or, when older, a file:// `source_uri`); this machine's
ledger resolves it (`services.pipeline.refs.resolve_source`) and the file is decoded behind the usual pixel guard.
Thumbnails, explanations (`/v1/explain`, `cxr search --explain`) all read a stored point's image through here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from services.config import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE
from services.errors import DecodeError, StoredImageError
from services.imaging import decode_image
from services.pipeline.ledger import Ledger
from services.pipeline.refs import resolve_source


def stored_image_path(ledger: Ledger, payload: Mapping[str, Any]) -> Path:
    """The file behind a stored payload (a `source_ref` via this machine's ledger, or an older file://
    `source_uri`). StoredImageError when this machine does not know the image (it was indexed on another host of a
    shared Qdrant server)."""
    path = resolve_source(ledger, payload)
    if path is None:
        what = "its source_ref is not in this server's ledger" if payload.get("source_ref") else "it has no source"
        raise StoredImageError(f"this server cannot find the indexed image ({what})")
    return Path(path)


def load_stored_pixels(
    ledger: Ledger,
    payload: Mapping[str, Any],
    point_id: str,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
) -> np.ndarray:
    """Decoded grey pixels in [0, 1] of a stored point; StoredImageError when its file is unknown, gone or broken."""
    path = stored_image_path(ledger, payload)
    try:
        return decode_image(path, max_pixels=max_pixels, min_side=min_side).pixels
    except DecodeError as exc:
        raise StoredImageError(f"the image of point {point_id} cannot be read any more: {exc.reason}") from exc
