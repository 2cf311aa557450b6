"""Shrinking an image by a whole factor inside the decoder, before any full-size float copy exists.

The model sees 128 px, but a CR from a PACS is 2,000-3,000 px and a PNG can be 8,900 px. A decoder given a
`target_side` (the side the caller resizes to) returns the image shrunk by `reduction_factors`, with `box_reduce`
on the integer samples. Each side is kept at least REDUCING_GAP x `target_side`: these are the factors of the box
step that `to_model_input` would itself take before its bilinear resize, so, given the decode's `extent`, it
produces what a full-size decode gives (tests/imaging/test_reduced_decode.py). `target_side=None` means a
full-size decode.
"""

from __future__ import annotations

import numpy as np

# Box-reduce by whole factors while the image stays at least this many times the target, then resize: shared with
# to_model_input, so a reduced decode hands it the image its own first step would have made.
REDUCING_GAP = 2.0
# Rows summed per step of box_reduce: bounds its int64 scratch to about this many bytes.
_BAND_BYTES = 1 << 20


def reduction_factors(height: int, width: int, target_side: int | None) -> tuple[int, int]:
    """(rows, columns) factors: per side, the largest whole factor that keeps it at least REDUCING_GAP x
    `target_side` (1: no reduction). The same factors Pillow's resize picks for `to_model_input`'s box step, so
    the two together give what a full-size decode gives, to float precision."""
    if target_side is None or target_side < 1:
        return 1, 1
    return _factor(height, target_side), _factor(width, target_side)


def _factor(side: int, target_side: int) -> int:
    return int(side / target_side / REDUCING_GAP) or 1  # as PIL.Image.resize computes it


def reduced_side(side: int, factor: int) -> int:
    """A side's length after box_reduce: a partial block at the edge still makes a pixel."""
    return -(-side // factor)


def box_reduce(values: np.ndarray, factors: tuple[int, int], *, lookup: np.ndarray | None = None) -> np.ndarray:
    """The mean of each block of (rows, columns) `factors` of an (H, W) or (H, W, C) array, as float64; the blocks
    at the right and bottom edges average the pixels they have (as Pillow's Image.reduce does). Factors (1, 1)
    and no `lookup` return `values` unchanged.

    Integer samples are summed in int64 a band of rows at a time, so the only full-size array is the input itself.
    `lookup`, a table indexed by the (unsigned integer) samples, maps each band before it is averaged: a pointwise
    transform at full resolution without a full-size copy of its output.
    """
    down, across = max(1, factors[0]), max(1, factors[1])
    if down == across == 1 and lookup is None:
        return values
    height, width = values.shape[:2]
    rest = values.shape[2:]
    kind = values.dtype.kind if lookup is None else lookup.dtype.kind
    accumulate = np.float64 if kind == "f" else np.int64
    sums = np.empty((reduced_side(height, down), reduced_side(width, across), *rest), dtype=accumulate)
    row_bytes = max(1, width * int(np.prod(rest, dtype=np.int64)) * 8)
    band = down * max(1, _BAND_BYTES // (row_bytes * down))
    for top in range(0, height, band):
        chunk = values[top : top + band] if lookup is None else lookup[values[top : top + band]]
        rows = _block_sums(chunk, down, 0, accumulate)
        sums[top // down : top // down + rows.shape[0]] = _block_sums(rows, across, 1, accumulate)
    row_counts = np.diff(np.append(np.arange(0, height, down), height))
    column_counts = np.diff(np.append(np.arange(0, width, across), width))
    counts = np.multiply.outer(row_counts, column_counts).reshape(sums.shape[:2] + (1,) * len(rest))
    return sums / counts


def _block_sums(values: np.ndarray, factor: int, axis: int, accumulate: type) -> np.ndarray:
    """Sums of consecutive runs of `factor` entries along `axis` (0 or 1), the last run keeping what is left: the
    whole runs as one reshaped sum (several times faster than np.add.reduceat over the same runs)."""
    length = values.shape[axis]
    whole = length // factor * factor
    head = values[:whole] if axis == 0 else values[:, :whole]
    shape = values.shape[:axis] + (whole // factor, factor) + values.shape[axis + 1 :]
    sums = head.reshape(shape).sum(axis=axis + 1, dtype=accumulate)
    if whole == length:
        return sums
    tail = values[whole:] if axis == 0 else values[:, whole:]
    return np.concatenate([sums, tail.sum(axis=axis, keepdims=True, dtype=accumulate)], axis=axis)
