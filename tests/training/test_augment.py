"""Batch augmentations: shapes, range, seeding, identity when off, and the affine maths."""

from __future__ import annotations

import pytest
import torch

from services.training.augment import AugmentConfig, affine_grid, augment


def _batch(n: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def test_shape_dtype_and_range_are_kept() -> None:
    batch = _batch()
    out = augment(batch, AugmentConfig(contrast=0.9, brightness=0.5), torch.Generator().manual_seed(0))
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert out.min().item() >= 0.0 and out.max().item() <= 1.0
    assert not torch.equal(out, batch)


def test_the_same_seed_gives_the_same_batch_and_another_seed_does_not() -> None:
    batch, cfg = _batch(), AugmentConfig(hflip=True)
    a = augment(batch, cfg, torch.Generator().manual_seed(7))
    b = augment(batch, cfg, torch.Generator().manual_seed(7))
    c = augment(batch, cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_all_knobs_off_is_the_identity_and_returns_a_copy() -> None:
    batch = _batch()
    out = augment(batch, AugmentConfig.none(), torch.Generator().manual_seed(0))
    assert torch.equal(out, batch) and out is not batch


def test_the_separable_grid_equals_torch_affine_grid() -> None:
    theta = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.affine_grid(theta, [5, 1, 12, 20], align_corners=False)
    torch.testing.assert_close(affine_grid(theta, 12, 20), expected, atol=1e-6, rtol=0)


def test_flip_alone_mirrors_the_columns_exactly() -> None:
    batch = _batch()
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), rotation_deg=0, contrast=0, brightness=0)
    flipped = augment(batch, AugmentConfig(**{**cfg.__dict__, "hflip": True, "hflip_p": 1.0}), torch.Generator())
    torch.testing.assert_close(flipped, batch.flip(-1), atol=1e-5, rtol=0)


def test_flip_is_off_by_default() -> None:
    assert AugmentConfig().hflip is False


def test_a_centred_half_crop_zooms_into_the_middle() -> None:
    # A bright centre square of half the side fills the whole output after a centred crop of a quarter area.
    batch = torch.zeros(2, 1, 32, 32)
    batch[:, :, 8:24, 8:24] = 1.0
    cfg = AugmentConfig(crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0), rotation_deg=0, contrast=0, brightness=0)
    out = augment(batch, cfg, torch.Generator().manual_seed(0))
    # The crop position is random, but any quarter-area crop covers part of the square.
    assert out.mean().item() > batch.mean().item()


def test_contrast_jitter_keeps_each_image_mean_when_nothing_clips() -> None:
    batch = 0.4 + 0.2 * _batch()
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), rotation_deg=0, contrast=0.2, brightness=0)
    out = augment(batch, cfg, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), batch.mean(dim=(1, 2, 3)), atol=1e-5, rtol=0)


def test_bad_ranges_are_refused() -> None:
    with pytest.raises(ValueError):
        AugmentConfig(crop_scale=(0.8, 0.6))
    with pytest.raises(ValueError):
        augment(torch.rand(2, 3, 8, 8), AugmentConfig(), torch.Generator())
