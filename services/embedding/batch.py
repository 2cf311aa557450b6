"""Batched inference: numpy images in, unit float32 vectors out, bf16 autocast where the hardware has it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from services.errors import ModelError

from .backends import BACKENDS, Runner, make_runner
from .checkpoint import checkpoint_id, load_checkpoint
from .model import CxrEncoder

# Pixel values a little outside [0, 1] come from resampling overshoot; far outside means unscaled input.
_RANGE_SLACK = 0.05


def bf16_supported(device: str = "cpu") -> bool:
    """True when `device` runs bf16 natively: CUDA with bf16, or a CPU with AVX512-BF16 or AMX.

    oneDNN also emulates bf16 on plain AVX-512, but that is slower than fp32, so it does not count.
    """
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device != "cpu":
        return False
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        cpu = torch.cpu
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # private probes moved or missing: assume no native bf16
        return False


class BatchEncoder:
    """Batched inference under torch.inference_mode, with bf16 autocast where supported (on by default).

    `backend` picks another runner from services.embedding.backends (e.g. "openvino-bf16"); it is built on the
    first `encode`, so a process that never encodes pays nothing. `self.encoder` stays the eager module (the
    explainer and the query path use it directly).
    """

    def __init__(
        self,
        encoder: CxrEncoder,
        *,
        batch_size: int = 32,
        bf16: bool | None = None,
        device: str = "cpu",
        model_id: str | None = None,
        backend: str | None = None,
        cache: Path | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.encoder = encoder.to(device).eval()
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.bf16 = bf16_supported(device) if bf16 is None else bf16
        self.dim = encoder.config.embed_dim
        self.image_size = encoder.config.image_size
        self.model_id = model_id
        self.backend = backend or ("eager-bf16" if self.bf16 else "eager-fp32")
        if self.backend not in BACKENDS:
            raise ModelError(f"unknown inference back end {self.backend!r}; known: {', '.join(BACKENDS)}")
        if self.backend.startswith("eager"):
            self.bf16 = self.backend == "eager-bf16"
        self._runner: Runner | None = None
        self._cache = cache

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        batch_size: int = 32,
        bf16: bool | None = None,
        device: str = "cpu",
        backend: str | None = None,
        cache_root: Path | None = None,
    ) -> BatchEncoder:
        """Load a checkpoint folder; `model_id` is its `checkpoint_id`. A converted model for a non-eager
        `backend` is kept under `cache_root/<model_id>/<backend>`."""
        model_id = checkpoint_id(path)
        return cls(
            load_checkpoint(path),
            batch_size=batch_size,
            bf16=bf16,
            device=device,
            model_id=model_id,
            backend=backend,
            cache=cache_root / model_id / backend if cache_root and backend else None,
        )

    def encode(self, images: np.ndarray) -> np.ndarray:
        """(N, S, S) grey images in [0, 1] -> (N, dim) float32 unit vectors; S is the model's image_size."""
        images = self._check(images)
        out = np.empty((len(images), self.dim), dtype=np.float32)
        if not self.backend.startswith("eager") and self.device.type == "cpu":
            if self._runner is None:
                self._runner = make_runner(self.encoder, self.backend, cache=self._cache)
            for start in range(0, len(images), self.batch_size):
                vectors = self._runner(images[start : start + self.batch_size, None])
                norms = np.linalg.norm(vectors, axis=1, keepdims=True)
                out[start : start + len(vectors)] = vectors / np.maximum(norms, 1e-12)
            return out
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16),
        ):
            for start in range(0, len(images), self.batch_size):
                batch = torch.from_numpy(images[start : start + self.batch_size]).unsqueeze(1).to(self.device)
                vectors = self.encoder(batch)
                # Renormalise in fp32: under autocast the head's output was rounded to bf16.
                out[start : start + len(batch)] = F.normalize(vectors.float(), dim=-1).cpu().numpy()
        return out

    def _check(self, images: np.ndarray) -> np.ndarray:
        size = self.image_size
        hint = f"Resize images to {size}x{size} (the checkpoint's image_size) with values in [0, 1] first."
        if not isinstance(images, np.ndarray) or images.ndim != 3 or images.shape[1:] != (size, size):
            shape = getattr(images, "shape", type(images).__name__)
            raise ModelError(f"the encoder takes (N, {size}, {size}) images, got {shape}", hint)
        if not np.issubdtype(images.dtype, np.floating):
            raise ModelError(f"the encoder takes float images in [0, 1], got dtype {images.dtype}", hint)
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.size:
            low, high = float(images.min()), float(images.max())
            if not (low >= -_RANGE_SLACK and high <= 1 + _RANGE_SLACK):  # also catches NaN
                raise ModelError(f"image values span [{low:g}, {high:g}], expected [0, 1]", hint)
        return images
