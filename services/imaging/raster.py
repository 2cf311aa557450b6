"""PNG, JPEG, TIFF, BMP and friends -> grey pixels, with Pillow.

Values are scaled by the format's full range (8-bit /255, 16-bit /65535), not the image's own min..max: a
raster image is already rendered for display, so its contrast is kept as is.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from services.errors import DecodeError, ImageTooLargeError
from services.imaging.reasons import DecodeReason, decoder_failure
from services.imaging.sniff import describe_unknown
from services.imaging.types import DecodedImage, ImageMeta
from services.imaging.validate import (
    check_dimensions,
    grey_from_colour,
    refuse_if_blank,
    scale_range,
)

# Plain raster formats only: Pillow's other plugins (EPS runs Ghostscript, for one) never see the file.
# JPEG's opener also returns multi-picture (MPO) files; MPO has no opener of its own to list.
RASTER_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "PPM", "WEBP", "GIF", "JPEG2000")

_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "P", "PA"})


def decode_raster(data: bytes, name: str, *, max_pixels: int, min_side: int) -> DecodedImage:
    """Decode one single-frame greyscale raster image held in memory; refuse anything else."""
    try:
        image = Image.open(io.BytesIO(data), formats=RASTER_FORMATS)
    except UnidentifiedImageError:
        raise DecodeError(name, describe_unknown(data), code=DecodeReason.NOT_AN_IMAGE) from None
    except Image.DecompressionBombError:
        raise ImageTooLargeError(name, f"too many pixels: over the limit of {max_pixels:,}") from None
    except Exception as exc:  # a recognised header that then fails to parse
        raise decoder_failure(name, "the image file", exc) from exc

    with image:
        fmt = "jpeg" if image.format == "MPO" else (image.format or "raster").lower()
        width, height = image.size
        check_dimensions(name, height, width, max_pixels=max_pixels, min_side=min_side)
        frames = getattr(image, "n_frames", 1)
        if frames > 1 and image.format != "MPO":  # an MPO's extra frames are previews or stereo pairs
            raise DecodeError(
                name,
                f"multi-frame image ({frames} frames): only single images are supported",
                code=DecodeReason.UNSUPPORTED_IMAGE,
            )
        mode = image.mode
        try:
            image.load()
            image = _upright(image)
            values, full_scale, bits = _grey_values(image, name)
        except DecodeError:
            raise
        except Exception as exc:  # truncated data, codec errors, out of memory
            raise decoder_failure(name, f"the {fmt} data", exc) from exc

    refuse_if_blank(name, values)
    if full_scale is None:  # float or wide-integer data has no nominal range: use its own
        pixels = scale_range(values, float(values.min()), float(values.max()))
    else:
        pixels = scale_range(values, 0.0, full_scale)
    height, width = pixels.shape
    meta = ImageMeta(format=fmt, height=height, width=width, bits_stored=bits, photometric=mode)
    return DecodedImage(pixels=np.ascontiguousarray(pixels), meta=meta)


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation, which phone and camera JPEGs rely on."""
    if image.getexif().get(_EXIF_ORIENTATION, 1) in (None, 1):
        return image
    return ImageOps.exif_transpose(image)


def _grey_values(image: Image.Image, name: str) -> tuple[np.ndarray, float | None, int]:
    """(values, full-scale value or None, bits per sample) for a loaded image, refusing colour."""
    mode = image.mode
    if mode == "1":
        return np.asarray(image, dtype=np.float64), 1.0, 1
    if mode in ("L", "LA", "La"):
        return np.asarray(image.getchannel(0), dtype=np.float64), 255.0, 8
    if mode in _SIXTEEN_BIT:
        return np.asarray(image).astype(np.float64), 65535.0, 16
    if mode == "I":
        values = np.asarray(image).astype(np.float64)
        # Pillow reads 16-bit PNG and PGM into mode I; their values sit in 0..65535.
        if values.min() >= 0 and values.max() <= 65535:
            return values, 65535.0, 16
        return values, None, 32
    if mode == "F":
        values = np.asarray(image).astype(np.float64)
        if not np.isfinite(values).all():
            raise DecodeError(name, "float image with NaN or infinite values", code=DecodeReason.UNSUPPORTED_IMAGE)
        return values, None, 32
    if mode in _COLOUR_MODES:
        rgb = np.asarray(image.convert("RGB"))
        return grey_from_colour(name, rgb, 255.0), 255.0, 8
    raise DecodeError(name, f"unsupported pixel mode {mode}", code=DecodeReason.UNSUPPORTED_IMAGE)
