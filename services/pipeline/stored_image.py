"""An indexed point's pixels: the ONE path from a stored payload to its image.

A payload holds no path, only an opaque `source_ref` (or, when older, a file:// `source_uri`); this machine's
ledger resolves it (`resolve_source`) and the file is decoded behind the usual pixel guard.
Thumbnails, explanations (`/v1/explain`, `cxr search --explain`) all read a stored point's image through here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np

from services.config import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, Settings
from services.errors import DecodeError, StoredImageError
from services.imaging import DecodedImage, decode_image
from services.pipeline.ledger import Ledger
from services.pipeline.refs import row_key


def resolve_source(where: Settings | Ledger, payload: Mapping[str, Any]) -> Path | None:
    """The local file a stored payload's image came from, or None when this machine does not know it.

    `where` is a Ledger (reuse one when resolving many) or the Settings (opens `settings.ledger_path`). The path is
    the one recorded at indexing time: the file may have moved since, so read it with `read_regular_file`. A
    `spool:` ref unknown to the refs table falls back to the ledger row of that instance. Payloads written before
    source_ref existed carry a file:// `source_uri`, which is read as it is.
    """
    ref = payload.get("source_ref")
    if not ref:
        uri = payload.get("source_uri")
        if isinstance(uri, str) and uri.startswith("file:"):
            return Path(url2pathname(urlparse(uri).path))
        return None
    ledger = where if isinstance(where, Ledger) else Ledger(where.ledger_path)
    path = ledger.resolve_ref(str(ref))
    if path is None:
        item = ledger.get(row_key(str(ref)))
        path = Path(item.path) if item is not None and item.path else None
    return path


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
    return load_stored_image(ledger, payload, point_id, max_pixels=max_pixels, min_side=min_side).pixels


def load_stored_image(
    ledger: Ledger,
    payload: Mapping[str, Any],
    point_id: str,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    target_side: int | None = None,
) -> DecodedImage:
    """`load_stored_pixels` as a DecodedImage; `target_side` allows a reduced decode for a small picture (show it
    with its `extent`, as `to_png` takes it)."""
    path = stored_image_path(ledger, payload)
    if not path.exists():
        raise StoredImageError(
            f"the image of point {point_id} is no longer kept on this server",
            "Files uploaded to POST /v1/index are deleted once indexed (CXR_API_UPLOAD_RETENTION_H keeps them);"
            " an indexed file may have been moved or deleted.",
        )
    try:
        return decode_image(path, max_pixels=max_pixels, min_side=min_side, target_side=target_side)
    except DecodeError as exc:
        raise StoredImageError(f"the image of point {point_id} cannot be read any more: {exc.reason}") from exc
