"""Batch augmentations for radiographs, in plain torch on (B, 1, S, S) tensors in [0, 1].

Random resized crop, a small rotation and an optional flip make up one affine map per image, so the whole
batch is resampled in a single `grid_sample` call. The sampling grid equals `F.affine_grid`'s, but it is built
from separable row and column terms: 0.8 ms rather than 11 ms for 64 x 128 x 128 on one thread. Brightness and
contrast jitter follow, then a clamp to [0, 1]. All randomness comes from the `torch.Generator` passed in, so a
seed reproduces the batch. A 64 x 1 x 128 x 128 batch takes about 9 ms on one thread, mostly `grid_sample`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation knobs. With every range collapsed (see `none()`), `augment` returns its input unchanged.

    `hflip` is off by default because chest anatomy is not left-right symmetric: the heart, the aortic knob
    and the gastric bubble sit on the left. A flipped film looks like situs inversus, not like another
    normal chest. Pixels that a crop or rotation pulls in from outside the image are black, which is the
    usual border of a radiograph.
    """

    crop_scale: tuple[float, float] = (0.6, 1.0)  # fraction of the image area kept
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop width / height, drawn log-uniformly
    rotation_deg: float = 10.0  # uniform in [-rotation_deg, +rotation_deg]
    contrast: float = 0.2  # factor uniform in [1 - contrast, 1 + contrast], around each image's mean
    brightness: float = 0.1  # offset uniform in [-brightness, +brightness]
    hflip: bool = False
    hflip_p: float = 0.5

    @staticmethod
    def none() -> AugmentConfig:
        """A configuration that changes nothing (evaluation, or ablations)."""
        return AugmentConfig(
            crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), rotation_deg=0.0, contrast=0.0, brightness=0.0
        )

    @property
    def geometric(self) -> bool:
        return self.crop_scale != (1.0, 1.0) or self.crop_ratio != (1.0, 1.0) or self.rotation_deg != 0 or self.hflip

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        lo, hi = self.crop_ratio
        if not 0 < lo <= hi:
            raise ValueError(f"crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}")
        if self.rotation_deg < 0 or self.contrast < 0 or self.brightness < 0:
            raise ValueError("rotation_deg, contrast and brightness are half-widths and must be >= 0")
        if not 0 <= self.hflip_p <= 1:
            raise ValueError(f"hflip_p must be in [0, 1], got {self.hflip_p}")


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=generator.device)


def _affine_thetas(n: int, cfg: AugmentConfig, generator: torch.Generator) -> Tensor:
    """(n, 2, 3) maps from output to input coordinates in [-1, 1]: input = t + crop_scale @ rotation @ output."""
    area = _uniform(n, *cfg.crop_scale, generator)
    log_ratio = _uniform(n, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), generator)
    ratio = torch.exp(log_ratio)
    # Crop side lengths as fractions of the (square) image; clipped so that the crop stays inside.
    width = torch.sqrt(area * ratio).clamp(max=1.0)
    height = torch.sqrt(area / ratio).clamp(max=1.0)
    # The crop centre lies where the crop still fits, uniformly: |t| <= 1 - side in normalised units.
    tx = (1 - width) * _uniform(n, -1.0, 1.0, generator)
    ty = (1 - height) * _uniform(n, -1.0, 1.0, generator)
    angle = torch.deg2rad(_uniform(n, -cfg.rotation_deg, cfg.rotation_deg, generator))
    flip = torch.ones(n, device=generator.device)
    if cfg.hflip:
        flip = torch.where(torch.rand(n, generator=generator, device=generator.device) < cfg.hflip_p, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.empty(n, 2, 3, device=generator.device)
    # Rotating the output grid rotates the resized crop; the flip mirrors its x axis.
    theta[:, 0, 0] = width * cos * flip
    theta[:, 0, 1] = -width * sin
    theta[:, 0, 2] = tx
    theta[:, 1, 0] = height * sin * flip
    theta[:, 1, 1] = height * cos
    theta[:, 1, 2] = ty
    return theta


def affine_grid(theta: Tensor, height: int, width: int) -> Tensor:
    """`F.affine_grid(theta, (n, c, height, width), align_corners=False)`, built from separable terms."""
    x = ((torch.arange(width, dtype=theta.dtype, device=theta.device) * 2 + 1) / width - 1).view(1, 1, width)
    y = ((torch.arange(height, dtype=theta.dtype, device=theta.device) * 2 + 1) / height - 1).view(1, height, 1)
    t = theta.reshape(-1, 6, 1, 1)
    grid = torch.empty(theta.shape[0], height, width, 2, dtype=theta.dtype, device=theta.device)
    # Each coordinate is (row term) + (column term): one full-size add per coordinate, written in place.
    torch.add(t[:, 0] * x, t[:, 1] * y + t[:, 2], out=grid[..., 0])
    torch.add(t[:, 3] * x, t[:, 4] * y + t[:, 5], out=grid[..., 1])
    return grid


def augment(batch: Tensor, cfg: AugmentConfig, generator: torch.Generator) -> Tensor:
    """Return an augmented copy of a (B, 1, S, S) float batch in [0, 1]; the random draws come from `generator`."""
    if batch.ndim != 4 or batch.shape[1] != 1:
        raise ValueError(f"augment expects (B, 1, S, S), got shape {tuple(batch.shape)}")
    n = batch.shape[0]
    out = batch
    if cfg.geometric:
        theta = _affine_thetas(n, cfg, generator).to(device=batch.device, dtype=batch.dtype)
        grid = affine_grid(theta, batch.shape[2], batch.shape[3])
        out = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if cfg.contrast > 0 or cfg.brightness > 0:
        factor = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, generator)
        offset = _uniform(n, -cfg.brightness, cfg.brightness, generator)
        factor = factor.to(device=batch.device, dtype=batch.dtype).view(n, 1, 1, 1)
        offset = offset.to(device=batch.device, dtype=batch.dtype).view(n, 1, 1, 1)
        # (x - mean) * factor + mean + offset, folded into one pass over the pixels: x * factor + shift.
        shift = out.mean(dim=(1, 2, 3), keepdim=True) * (1 - factor) + offset
        out = out.mul(factor) if out is batch else out.mul_(factor)  # never write into the caller's batch
        out.add_(shift)
    if out is batch:
        return batch.clone()
    return out.clamp_(0.0, 1.0)
