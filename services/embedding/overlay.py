"""Heat maps drawn for people: a map on the patch grid scaled, upsampled and blended over its grey image (PNG).

Used by `/v1/explain` and `cxr search --explain`; the maps themselves come from services.embedding.explain.
torch is imported inside `upsample_map` only: the API imports this module at start, and a server whose search runs
on OpenVINO should not hold torch until the first explanation.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from .explain import PairExplanation

DISPLAY_MAX_SIDE = 512


def normalise_map(heat: np.ndarray) -> np.ndarray:
    """Scale a map to [0, 1] (min to max); a constant map becomes zeros."""
    heat = np.asarray(heat, dtype=np.float32)
    low, high = float(heat.min()), float(heat.max())
    if not high > low:
        return np.zeros_like(heat)
    return (heat - low) / (high - low)


def upsample_map(heat: np.ndarray, height: int, width: int) -> np.ndarray:
    """A patch-grid map resized bilinearly to (height, width), e.g. the original image's size."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(heat, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()


# A small perceptual colormap (matplotlib's "inferno" sampled at 9 points), so rendering needs no matplotlib.
_INFERNO = np.array(
    [
        [0, 0, 4],
        [31, 12, 72],
        [85, 15, 109],
        [136, 34, 106],
        [186, 54, 85],
        [227, 89, 51],
        [249, 140, 10],
        [249, 201, 50],
        [252, 255, 164],
    ],
    dtype=np.float32,
)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB (..., 3) by linear interpolation between the colormap's anchors."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)), 0.0, 1.0) * (len(_INFERNO) - 1)
    low = np.floor(v).astype(int).clip(0, len(_INFERNO) - 2)
    frac = (v - low)[..., None]
    rgb = _INFERNO[low] * (1 - frac) + _INFERNO[low + 1] * frac
    return rgb.round().astype(np.uint8)


def overlay_image(
    pixels: np.ndarray, heat: np.ndarray, *, alpha: float = 0.6, max_side: int = DISPLAY_MAX_SIDE
) -> Image.Image:
    """The grey image (float in [0, 1], any size) with the map over it, as an RGB PIL image.

    The map is scaled to [0, 1] and blended with opacity alpha * value, so irrelevant regions show the film.
    The image is shrunk to at most `max_side` pixels on its longer side for display.
    """
    from PIL import Image

    grey = np.clip(np.nan_to_num(np.asarray(pixels, dtype=np.float32)), 0.0, 1.0)
    if grey.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {grey.shape}")
    h, w = grey.shape
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    shown = Image.fromarray((grey * 255).round().astype(np.uint8), mode="L").resize(size, Image.Resampling.BILINEAR)
    base = np.repeat(np.asarray(shown, dtype=np.float32)[..., None], 3, axis=-1)
    values = np.clip(upsample_map(normalise_map(heat), size[1], size[0]), 0.0, 1.0)
    a = (alpha * values)[..., None]
    rgb = base * (1 - a) + colormap(values).astype(np.float32) * a
    return Image.fromarray(rgb.round().astype(np.uint8), mode="RGB")


def overlay_png(pixels: np.ndarray, heat: np.ndarray, *, alpha: float = 0.6, max_side: int = DISPLAY_MAX_SIDE) -> bytes:
    """`overlay_image` encoded as PNG bytes."""
    buf = io.BytesIO()
    overlay_image(pixels, heat, alpha=alpha, max_side=max_side).save(buf, format="PNG")
    return buf.getvalue()


def pair_png(query: np.ndarray, result: np.ndarray, explanation: PairExplanation, *, gap: int = 8) -> bytes:
    """The query (left) and the result (right), each with its own map, side by side on black, as PNG bytes."""
    from PIL import Image

    left = overlay_image(query, explanation.query_map)
    right = overlay_image(result, explanation.result_map)
    canvas = Image.new("RGB", (left.width + gap + right.width, max(left.height, right.height)))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + gap, 0))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()
