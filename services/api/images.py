"""Pixels the API shows: thumbnails of indexed points, rendered server-side from the point's stored reference, and
previews of an uploaded query.

Display follows the decoder (services.imaging.dicom): the modality LUT (rescale), then the VOI LUT or the first
window, then MONOCHROME1 inversion; a percentile window (0.5-99.5 %) where the file has none. A request never
names a file: the point id selects a stored payload, and only its reference (`source_ref`, or the older
`source_uri`) leads to the pixels.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from services.config import Settings
from services.embedding.explain import StoredImageError
from services.errors import DecodeError
from services.imaging import decode_image
from services.pipeline.refs import resolve_source

RENDER_VERSION = "1"  # part of every ETag: bump when the rendering changes
THUMBNAIL_SIZES = (32, 1024)  # smallest and largest max side a client may ask for


def source_path(payload: Mapping[str, Any], settings: Settings) -> Path:
    """The file behind a stored payload, through the pipeline's reference resolver (a `source_ref` via this
    machine's ledger, or an older file:// `source_uri`). StoredImageError (409) when this machine does not know
    the image (it was indexed on another host of a shared Qdrant server)."""
    path = resolve_source(settings, payload)
    if path is None:
        what = "its source_ref is not in this server's ledger" if payload.get("source_ref") else "it has no source"
        raise StoredImageError(f"this server cannot find the indexed image ({what})")
    return Path(path)


def load_pixels(payload: Mapping[str, Any], settings: Settings, point_id: str) -> np.ndarray:
    """Decoded grey pixels in [0, 1] of a stored point; StoredImageError (409) when its file is gone or broken."""
    path = source_path(payload, settings)
    try:
        return decode_image(path, max_pixels=settings.max_pixels, min_side=settings.min_side).pixels
    except DecodeError as exc:
        raise StoredImageError(f"the image of point {point_id} cannot be read any more: {exc.reason}") from exc


def etag(point_id: str, payload: Mapping[str, Any], size: int) -> str:
    """A strong ETag from what decides the pixels: the point, its content hash and reference, the size."""
    what = "|".join(
        str(x)
        for x in (
            RENDER_VERSION,
            point_id,
            payload.get("content_sha256"),
            payload.get("source_ref") or payload.get("source_uri"),
            payload.get("sop_uid"),
            size,
        )
    )
    return '"' + hashlib.sha256(what.encode()).hexdigest()[:32] + '"'


def etag_matches(if_none_match: str | None, tag: str) -> bool:
    """RFC 9110 If-None-Match: `*`, or any listed tag equal under weak comparison."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    bare = tag.removeprefix("W/")
    return any(t.strip().removeprefix("W/") == bare for t in if_none_match.split(","))


def to_png(pixels: np.ndarray, max_side: int) -> bytes:
    """Grey pixels in [0, 1] as an 8-bit PNG whose longer side is at most `max_side` (aspect kept)."""
    grey = np.clip(np.nan_to_num(pixels.astype(np.float32)), 0.0, 1.0)
    image = Image.fromarray((grey * 255).round().astype(np.uint8), mode="L")
    scale = min(1.0, max_side / max(image.size))
    if scale < 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


class ThumbnailCache:
    """Rendered PNGs by ETag, least recently used dropped beyond `max_bytes` (a grid asks for the same ones)."""

    def __init__(self, max_bytes: int = 32 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            png = self._items.get(key)
            if png is not None:
                self._items.move_to_end(key)
            return png

    def put(self, key: str, png: bytes) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = png
            self._bytes += len(png)
            while self._bytes > self.max_bytes and self._items:
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old)
