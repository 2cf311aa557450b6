"""Grey pixels as a small 8-bit PNG: how every picture of an X-ray is shown (the viewer's thumbnails and query
preview, the similar-cases report)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def to_png(pixels: np.ndarray, max_side: int, *, extent: tuple[float, float] | None = None) -> bytes:
    """Grey pixels in [0, 1] as an 8-bit PNG whose longer side is at most `max_side` (aspect kept). `extent` is a
    reduced decode's `DecodedImage.extent`: the image's (height, width) in these pixels, whose aspect is kept."""
    grey = np.clip(np.nan_to_num(pixels.astype(np.float32)), 0.0, 1.0)
    image = Image.fromarray((grey * 255).round().astype(np.uint8), mode="L")
    height, width = extent or (image.height, image.width)
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0 or extent is not None:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        box = None if extent is None else (0.0, 0.0, min(width, image.width), min(height, image.height))
        image = image.resize(size, Image.Resampling.LANCZOS, box=box, reducing_gap=2.0)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()
