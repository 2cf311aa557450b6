"""The box step a reduced decode takes (services.imaging.reduce), against Pillow's own, and what it costs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from services.imaging import to_model_input
from services.imaging.budget import RASTER_GREY_BPP, estimate_cost
from services.imaging.reduce import box_reduce, reduction_factors


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(("height", "width", "factors"), [(40, 50, (3, 3)), (37, 53, (4, 7)), (9, 10, (9, 10))])
def test_box_reduce_is_pillows_reduce_with_its_partial_edges(height: int, width: int, factors: tuple) -> None:
    values = np.random.default_rng(0).integers(0, 4096, (height, width)).astype(np.uint16)
    expected = np.asarray(Image.fromarray(values.astype(np.float32)).reduce((factors[1], factors[0])))
    got = box_reduce(values, factors)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_box_reduce_of_colour_and_through_a_table() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (31, 45, 3)).astype(np.uint8)
    per_channel = np.stack([box_reduce(rgb[..., c], (4, 3)) for c in range(3)], axis=-1)
    np.testing.assert_allclose(box_reduce(rgb, (4, 3)), per_channel)
    codes = rng.integers(0, 2**16, (70, 33)).astype(np.uint16)
    table = rng.random(2**16)
    np.testing.assert_allclose(box_reduce(codes, (5, 2), lookup=table), box_reduce(table[codes], (5, 2)))
    assert box_reduce(codes, (1, 1)) is codes


def test_box_reduce_sums_in_bands() -> None:
    # Taller than one band of rows: the bands must meet exactly.
    values = np.random.default_rng(2).integers(0, 2**16, (3000, 700)).astype(np.uint16)
    expected = values[:2997].reshape(999, 3, 700).astype(np.float64).mean(axis=1)
    np.testing.assert_allclose(box_reduce(values, (3, 1))[:999], expected)


@pytest.mark.parametrize(
    ("height", "width", "size"), [(1955, 1841, 128), (301, 1200, 64), (700, 517, 32), (255, 256, 128), (90, 4000, 16)]
)
def test_reduced_then_resized_is_todays_model_input(height: int, width: int, size: int) -> None:
    """The property the reduced decodes rest on: box_reduce by reduction_factors, then to_model_input with the
    extent, gives what to_model_input gives on the full image, to float precision."""
    pixels = np.random.default_rng(height).random((height, width)).astype(np.float32)
    factors = reduction_factors(height, width, size)
    extent = (height / factors[0], width / factors[1])
    reduced = box_reduce(pixels, factors).astype(np.float32)
    full = to_model_input(pixels, size)
    np.testing.assert_allclose(to_model_input(reduced, size, extent=extent), full, atol=2e-6)


def test_no_reduction_without_a_target_or_below_twice_it() -> None:
    assert reduction_factors(3000, 3000, None) == (1, 1)
    assert reduction_factors(255, 4000, 128) == (1, 15)
    assert reduction_factors(2560, 2559, 128) == (10, 9)


def test_a_reduced_decode_reserves_less_of_the_budget() -> None:
    side = 3000
    data = _png((np.add.outer(np.arange(side), np.arange(side)) % 251).astype(np.uint8))
    full, reduced = estimate_cost(data), estimate_cost(data, target_side=128)
    assert full.bytes == side * side * RASTER_GREY_BPP + 2 * len(data)
    assert full.pixels == reduced.pixels == side * side
    assert reduced.bytes < full.bytes / 3
    small = _png((np.arange(200 * 200).reshape(200, 200) % 251).astype(np.uint8))
    assert estimate_cost(small, target_side=128) == estimate_cost(small)  # too small to reduce: the full cost
