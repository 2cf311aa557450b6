"""A file's original values for a viewer that windows them itself: the modality values (after Rescale Slope and
Intercept, before any VOI LUT or window), reduced to a display size and packed as 16-bit codes.

The codes map the image's value range linearly: `value_min` -> 0, `value_max` -> 65535, so a client recovers a
value as value_min + code / 65535 * (value_max - value_min) and windows it as it likes. MONOCHROME1 is NOT
inverted (the client inverts after its window, as a PACS does). The default window is the file's first
WindowCenter/WindowWidth in the same units, else the 0.5-99.5 percentile window (services.imaging.voi's). PNG and
JPEG give their samples as they are (0-255 for 8 bits), MONOCHROME2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from services.errors import DecodeError
from services.imaging.dicom import read_dicom_values
from services.imaging.dicom_meta import int_attr, text_attr
from services.imaging.raster import decode_raster
from services.imaging.reasons import DecodeReason, decoder_failure
from services.imaging.sniff import HEAD_BYTES, is_dicom
from services.imaging.voi import PERCENTILE_SAMPLE, ROBUST_PERCENTILES

MAX_SIDE = 2048  # the largest longest side a client may ask for
CODES = 65535


@dataclass(frozen=True)
class ModalityImage:
    """`codes` (uint16, height x width, row-major) and what they stand for."""

    codes: np.ndarray
    value_min: float
    value_max: float
    window_center: float
    window_width: float
    photometric: str
    bits_stored: int

    def headers(self) -> dict[str, str]:
        """The HTTP headers that describe `codes` (X-Width, X-Height, X-Value-Min, ...)."""
        height, width = self.codes.shape
        return {
            "X-Width": str(width),
            "X-Height": str(height),
            "X-Value-Min": _num(self.value_min),
            "X-Value-Max": _num(self.value_max),
            "X-Window-Center": _num(self.window_center),
            "X-Window-Width": _num(self.window_width),
            "X-Photometric": self.photometric,
            "X-Bits-Stored": str(self.bits_stored),
        }

    def to_bytes(self) -> bytes:
        return self.codes.astype("<u2", copy=False).tobytes(order="C")


def modality_image(data: bytes, name: str, *, max_pixels: int, min_side: int, max_side: int) -> ModalityImage:
    """The original values of a DICOM, PNG or JPEG file held in memory, its longest side at most `max_side`.
    DecodeError as the decoders give it."""
    if not data:
        raise DecodeError(name, "empty file", code=DecodeReason.NOT_AN_IMAGE)
    try:
        if is_dicom(data[:HEAD_BYTES]):
            return _from_dicom(data, name, max_pixels=max_pixels, min_side=min_side, max_side=max_side)
        return _from_raster(data, name, max_pixels=max_pixels, min_side=min_side, max_side=max_side)
    except DecodeError:
        raise
    except Exception as exc:  # a path the decoders did not foresee: still a DecodeError, never a 500
        raise decoder_failure(name, "the file", exc) from exc


def _from_dicom(data: bytes, name: str, *, max_pixels: int, min_side: int, max_side: int) -> ModalityImage:
    ds, raw = read_dicom_values(data, name, max_pixels=max_pixels, min_side=min_side)
    bits = int_attr(ds, "BitsStored") or raw.dtype.itemsize * 8
    if raw.ndim == 3:  # a grey film stored in a colour model: rendered values, no modality transform
        values = raw.mean(axis=-1, dtype=np.float64)
        photometric = "MONOCHROME2"
    else:
        values = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
        photometric = (text_attr(ds, "PhotometricInterpretation") or "MONOCHROME2").upper()
    low, high = float(values.min()), float(values.max())
    center, width = _file_window(ds) or _percentile_window(values)
    return ModalityImage(_codes(values, low, high, max_side), low, high, center, width, photometric, bits)


def _from_raster(data: bytes, name: str, *, max_pixels: int, min_side: int, max_side: int) -> ModalityImage:
    decoded = decode_raster(data, name, max_pixels=max_pixels, min_side=min_side)
    bits = decoded.meta.bits_stored or 8
    # decode_raster scales the samples' nominal range (0 .. 2**bits - 1) to [0, 1]; wider data by its own range
    top = float(2**bits - 1) if bits <= 16 else 1.0
    values = decoded.pixels.astype(np.float64) * top
    center, width = _percentile_window(values)
    return ModalityImage(_codes(values, 0.0, top, max_side), 0.0, top, center, width, "MONOCHROME2", bits)


def _codes(values: np.ndarray, low: float, high: float, max_side: int) -> np.ndarray:
    """`values` reduced so the longest side is at most `max_side` (box average) and mapped to 0..65535."""
    unit = np.zeros(values.shape, np.float32) if high <= low else ((values - low) / (high - low)).astype(np.float32)
    height, width = unit.shape
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        unit = np.asarray(Image.fromarray(unit, mode="F").resize(size, Image.Resampling.BOX), dtype=np.float32)
    return np.rint(np.clip(unit, 0.0, 1.0) * CODES).astype(np.uint16)


def _file_window(ds: Dataset) -> tuple[float, float] | None:
    """The first WindowCenter/WindowWidth of the file (modality units), or None when it has no usable one."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    try:  # one value, or several (a MultiValue): the first is the default
        first = [float(v[0]) if hasattr(v, "__len__") and not isinstance(v, str) else float(v) for v in (center, width)]
    except (TypeError, ValueError, IndexError):
        return None
    if not np.isfinite(first).all() or first[1] <= 0:
        return None
    return first[0], first[1]


def _percentile_window(values: np.ndarray) -> tuple[float, float]:
    step = max(1, int((values.size / PERCENTILE_SAMPLE) ** 0.5))
    low, high = (float(v) for v in np.percentile(values[::step, ::step], ROBUST_PERCENTILES))
    if high <= low:
        low, high = float(values.min()), float(values.max())
    return (low + high) / 2, max(high - low, 1.0)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"
