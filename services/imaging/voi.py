"""Stored DICOM values -> [0, 1]: Modality LUT, then the first VOI LUT or window, else robust percentiles.

`to_unit` maps a full-size image (float64 copies of it). With a reduction factor and 8- or 16-bit samples, the same
mapping is computed once per possible stored code (a table of at most 65,536 entries) and applied a band of rows
at a time while the image is box-reduced, so windowing still acts on the real values, pixel by pixel, and no
full-size float copy is made. Only the checks that look at the whole image (is the windowed image constant?) see
the reduced image instead.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from services.imaging.reduce import box_reduce
from services.imaging.validate import scale_range

# Without a usable window, the 0.5th..99.5th percentiles span black..white: burnt-in labels, collimator edges
# and dead pixels would otherwise squeeze the anatomy into a few grey levels. Percentiles are taken on a
# strided sample of about this many pixels, which is deterministic and fast.
ROBUST_PERCENTILES = (0.5, 99.5)
PERCENTILE_SAMPLE = 1_000_000


def to_unit(raw: np.ndarray, ds: Dataset, factors: tuple[int, int] = (1, 1)) -> np.ndarray:
    """Modality LUT, then the first VOI LUT or window scaled by its own output range; else robust percentiles.
    Then box-reduced by (rows, columns) `factors` (float32 out).

    A window that leaves the image constant, or malformed rescale/VOI values, fall back to the percentile
    stretch: such headers are common and the pixels are still worth having.
    """
    if max(factors) == 1:
        return _to_unit_full(raw, ds)
    if raw.dtype.kind in "ui" and raw.dtype.itemsize <= 2:
        return _to_unit_by_table(raw, ds, factors)
    return box_reduce(_to_unit_full(raw, ds), factors).astype(np.float32)  # 32-bit samples: rare


def _to_unit_full(raw: np.ndarray, ds: Dataset) -> np.ndarray:
    try:
        values = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
    except Exception:
        # Without a trustworthy rescale the window's units are unknown too.
        return _robust_unit(raw.astype(np.float64))
    windowed = _apply_window(values, ds)
    if windowed is not None and windowed.min() < windowed.max():
        return windowed
    return _robust_unit(values)


def _to_unit_by_table(raw: np.ndarray, ds: Dataset, factors: tuple[int, int]) -> np.ndarray:
    """`_to_unit_full` then box_reduce, through a table indexed by each sample's bit pattern (its code)."""
    native = raw.dtype.newbyteorder("=")
    code_type = np.dtype(np.uint8 if native.itemsize == 1 else np.uint16)
    codes = np.ascontiguousarray(raw, dtype=native).view(code_type)
    domain = np.arange(2 ** (8 * native.itemsize), dtype=code_type).view(native)  # the value each code stands for
    try:
        values = np.asarray(apply_modality_lut(domain, ds), dtype=np.float64)
    except Exception:
        values = None
    if values is not None:
        windowed = _apply_window(values, ds)
        if windowed is not None:
            out = box_reduce(codes, factors, lookup=windowed)
            if out.min() < out.max():
                return out.astype(np.float32)
    table = domain.astype(np.float64) if values is None else values
    step = _sample_step(codes.size)
    low, high = _robust_range(table[codes[::step, ::step]])
    if high <= low:  # a nearly constant image with a few outliers: use the full range
        present = table[np.unique(codes)]
        low, high = float(present.min()), float(present.max())
    return box_reduce(codes, factors, lookup=scale_range(table, low, high)).astype(np.float32)


def _apply_window(values: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """The first VOI LUT (preferred, as pydicom does) or window, mapped so its output range is [0, 1]."""
    try:
        lut_domain = _voi_lut_domain(ds)
        if lut_domain is not None:
            # Feed the LUT integers inside its domain: pydicom casts inputs to uint16 and would wrap floats.
            out = apply_voi_lut(np.clip(np.rint(values), lut_domain[0], lut_domain[-1]).astype(np.int64), ds)
            table = apply_voi_lut(lut_domain, ds)
            low, high = float(table.min()), float(table.max())
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            out = apply_voi_lut(values, ds)
            # What the window maps -inf and +inf to is its output range (LINEAR, LINEAR_EXACT and SIGMOID).
            with np.errstate(over="ignore"):
                ends = apply_voi_lut(np.array([-np.inf, np.inf]), ds)
            low, high = float(ends.min()), float(ends.max())
        else:
            return None
    except Exception:  # malformed window or LUT values: ignore the VOI rather than refuse the image
        return None
    if not np.isfinite([low, high]).all() or low == high:
        return None
    return scale_range(out, low, high)


def _voi_lut_domain(ds: Dataset) -> np.ndarray | None:
    """Every input value the first VOI LUT maps, or None when there is no complete VOI LUT."""
    sequence = ds.get("VOILUTSequence")
    if not sequence:
        return None
    item = sequence[0]
    descriptor = item.get("LUTDescriptor")
    if descriptor is None or item.get("LUTData") is None:
        return None
    entries, first = int(descriptor[0]) or 2**16, int(descriptor[1])
    return np.arange(first, first + entries, dtype=np.int64)


def _sample_step(size: int) -> int:
    return max(1, int((size / PERCENTILE_SAMPLE) ** 0.5))


def _robust_range(sample: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(sample, ROBUST_PERCENTILES)
    return float(low), float(high)


def _robust_unit(values: np.ndarray) -> np.ndarray:
    step = _sample_step(values.size)
    low, high = _robust_range(values[::step, ::step])
    if high <= low:  # a nearly constant image with a few outliers: use the full range
        low, high = float(values.min()), float(values.max())
    return scale_range(values, low, high)
