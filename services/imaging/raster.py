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
from services.imaging.reduce import box_reduce, reduction_factors
from services.imaging.sniff import describe_unknown
from services.imaging.types import DecodedImage, ImageMeta
from services.imaging.validate import (
    check_dimensions,
    refuse_colour,
    refuse_if_blank,
    scale_range,
)

# Plain raster formats only: Pillow's other plugins (EPS runs Ghostscript, for one) never see the file.
# JPEG's opener also returns multi-picture (MPO) files; MPO has no opener of its own to list.
RASTER_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "PPM", "WEBP", "GIF", "JPEG2000")

_EXIF_ORIENTATION = 0x0112
_QUARTER_TURNS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "P", "PA"})


def decode_raster(
    data: bytes, name: str, *, max_pixels: int, min_side: int, target_side: int | None = None
) -> DecodedImage:
    """Decode one single-frame greyscale raster image held in memory; refuse anything else.

    With `target_side`, the pixels come back box-reduced on their integer samples (services.imaging.reduce), so
    no full-size float copy is ever made. `meta` keeps the file's own size.

    JPEGs are not decoded at 1/2, 1/4 or 1/8 scale in the DCT (Pillow's `draft`), though it is cheaper: libjpeg's
    scaled IDCT is not a box average, and on upscaled cxr-public JPEGs it moved embeddings of the 128 px model
    to cosine 0.981-0.992 against a full decode (benchmarks/decode.py, the `equivalence` rows).
    """
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
            turned = image.getexif().get(_EXIF_ORIENTATION, 1) in _QUARTER_TURNS
            image = _upright(image)
            values, full_scale, bits = _grey_values(image, name)
        except DecodeError:
            raise
        except Exception as exc:  # truncated data, codec errors, out of memory
            raise decoder_failure(name, f"the {fmt} data", exc) from exc

    if values.ndim == 2:
        refuse_if_blank(name, values)  # on the samples themselves, before any averaging
    # Float or wide-integer data has no nominal range: it is scaled by its own, taken before averaging.
    low, high = (0.0, full_scale) if full_scale is not None else (float(values.min()), float(values.max()))
    factors = reduction_factors(values.shape[0], values.shape[1], target_side)
    values = box_reduce(values, factors)
    if values.ndim == 3:  # checked grey by _grey_values: its channels' mean is the grey value
        values = values.mean(axis=-1, dtype=np.float64)
        refuse_if_blank(name, values)
    pixels = scale_range(values, low, high)
    if turned:
        width, height = height, width
    meta = ImageMeta(format=fmt, height=height, width=width, bits_stored=bits, photometric=mode)
    return DecodedImage(pixels=np.ascontiguousarray(pixels), meta=meta, reduction=factors)


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation, which phone and camera JPEGs rely on."""
    if image.getexif().get(_EXIF_ORIENTATION, 1) in (None, 1):
        return image
    return ImageOps.exif_transpose(image)


def _grey_values(image: Image.Image, name: str) -> tuple[np.ndarray, float | None, int]:
    """(values, full-scale value or None, bits per sample) for a loaded image, refusing colour. Values keep the
    image's own sample type (no float copy): (H, W), or (H, W, 3) for a colour mode that is really grey."""
    mode = image.mode
    if mode == "1":
        return np.asarray(image), 1.0, 1
    if mode in ("L", "LA", "La"):
        return np.asarray(image.getchannel(0)), 255.0, 8
    if mode in _SIXTEEN_BIT:
        return np.asarray(image), 65535.0, 16
    if mode == "I":
        values = np.asarray(image)
        # Pillow reads 16-bit PNG and PGM into mode I; their values sit in 0..65535.
        if values.min() >= 0 and values.max() <= 65535:
            return values, 65535.0, 16
        return values, None, 32
    if mode == "F":
        values = np.asarray(image)
        if not np.isfinite(values).all():
            raise DecodeError(name, "float image with NaN or infinite values", code=DecodeReason.UNSUPPORTED_IMAGE)
        return values, None, 32
    if mode in _COLOUR_MODES:
        rgb = np.asarray(image.convert("RGB"))
        refuse_colour(name, rgb, 255.0)
        return rgb, 255.0, 8
    raise DecodeError(name, f"unsupported pixel mode {mode}", code=DecodeReason.UNSUPPORTED_IMAGE)
