"""Pixels the API shows: thumbnails of indexed points, rendered server-side from the point's stored reference
(read through services.pipeline.stored_image, see ApiState.point_pixels), and previews of an uploaded query.

Display follows the decoder (services.imaging.dicom): the modality LUT (rescale), then the VOI LUT or the first
window, then MONOCHROME1 inversion; a percentile window (0.5-99.5 %) where the file has none. A request never
names a file: the point id selects a stored payload, and only its reference (`source_ref`, or the older
`source_uri`) leads to the pixels.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from services.imaging.thumbnail import to_png  # noqa: F401 - shown by the routes, rendered below services

RENDER_VERSION = "1"  # part of every ETag: bump when the rendering changes
THUMBNAIL_SIZES = (32, 1024)  # smallest and largest max side a client may ask for


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


class ThumbnailCache:
    """Rendered PNGs by ETag, least recently used dropped beyond `max_bytes` (a grid asks for the same ones); a PNG
    larger than all of it is not kept (CXR_API_THUMBNAIL_CACHE_MB)."""

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

    def clear(self) -> None:
        """Drop every rendered image (after a forget: nothing of an erased patient stays in memory)."""
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def put(self, key: str, png: bytes) -> None:
        with self._lock:
            if key in self._items or len(png) > self.max_bytes:
                return
            self._items[key] = png
            self._bytes += len(png)
            while self._bytes > self.max_bytes and self._items:
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old)
