"""Checks shared by the DICOM and raster decoders: declared size, colour, blank images."""

from __future__ import annotations

import numpy as np

from services.errors import DecodeError, ImageTooLargeError
from services.imaging.reasons import DecodeReason, describe_exception

__all__ = [
    "check_dimensions",
    "describe_exception",
    "grey_from_colour",
    "refuse_colour",
    "refuse_if_blank",
    "scale_range",
]

# A grey image stored as RGB (a JPEG re-saved in colour, a screenshot) differs between channels by a few
# levels of noise at most. Refuse as colour when more than GREY_OUTLIER_FRACTION of the pixels differ by
# more than GREY_TOLERANCE of full scale; the small allowance keeps a grey film with a tiny coloured marker.
GREY_TOLERANCE = 6 / 255
GREY_OUTLIER_FRACTION = 0.001


def check_dimensions(name: str, height: int, width: int, *, max_pixels: int, min_side: int) -> None:
    """Refuse a declared size before any pixels are decoded: decompression bombs and thumbnails."""
    if height <= 0 or width <= 0:
        raise DecodeError(name, f"invalid image size {width}x{height}", code=DecodeReason.CORRUPT)
    if height * width > max_pixels:
        raise ImageTooLargeError(
            name,
            f"too many pixels: {width}x{height} is over the limit of {max_pixels:,}",
            "Raise CXR_MAX_PIXELS if the image is genuine.",
        )
    if min(height, width) < min_side:
        raise DecodeError(
            name, f"image too small: {width}x{height}, shorter side under {min_side} px", code=DecodeReason.TOO_SMALL
        )


def grey_from_colour(name: str, rgb: np.ndarray, full_scale: float) -> np.ndarray:
    """Collapse an (H, W, 3) array to (H, W) float64 when it is really grey; otherwise refuse as colour."""
    refuse_colour(name, rgb, full_scale)
    return rgb.mean(axis=-1, dtype=np.float64)


def refuse_colour(name: str, rgb: np.ndarray, full_scale: float) -> None:
    """Refuse an (H, W, 3) array as colour unless it is really grey (see GREY_TOLERANCE); integer samples are
    compared as integers, so a full-size image is never copied to float."""
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    if rgb.dtype.kind == "i":  # a signed difference could overflow its own type
        high, low = high.astype(np.int64), low.astype(np.int64)
    spread = high - low
    outliers = np.count_nonzero(spread > GREY_TOLERANCE * full_scale)
    if outliers > GREY_OUTLIER_FRACTION * spread.size:
        raise DecodeError(
            name, "colour image: only greyscale radiographs are supported", code=DecodeReason.UNSUPPORTED_IMAGE
        )


def refuse_if_blank(name: str, values: np.ndarray) -> None:
    """Refuse an image whose pixels are all equal: it carries nothing to retrieve by."""
    if values.size == 0 or values.min() == values.max():
        raise DecodeError(name, "blank image: all pixels are equal", code=DecodeReason.BLANK)


def scale_range(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly to [0, 1] as float32, clipping outside; `low > high` flips the ramp."""
    out = (values.astype(np.float64) - low) / (high - low)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
