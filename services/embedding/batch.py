"""Batched inference: numpy images in, unit float32 vectors out, bf16 autocast where the hardware has it.

torch loads only where it is used: an encoder from a checkpoint with an OpenVINO back end and a warm model cache
(services.embedding.openvino_cache) encodes without it, which is what lets `cxr search` start fast.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from services.errors import ModelError

from .backends import BACKENDS, Runner, make_runner, openvino_runner
from .checkpoint_meta import checkpoint_folder, checkpoint_id, read_checkpoint_config
from .cpu_features import inference_threads, native_bf16_cpu
from .openvino_cache import IR_DIR, IR_XML, OPENVINO_BACKENDS, checkpoint_cache_key
from .registry import EncoderConfig

if TYPE_CHECKING:
    import torch

    from .model import CxrEncoder

# Pixel values a little outside [0, 1] come from resampling overshoot; far outside means unscaled input.
_RANGE_SLACK = 0.05


def bf16_supported(device: str = "cpu") -> bool:
    """True when `device` runs bf16 natively: CUDA with bf16, or a CPU with AVX512-BF16 or AMX.

    oneDNN also emulates bf16 on plain AVX-512, but that is slower than fp32, so it does not count.
    """
    import torch

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
    first `encode`, so a process that never encodes pays nothing. `self.encoder` is the eager module (the
    explainer uses it); built from a checkpoint with an OpenVINO back end and a warm cache, it loads on first use.
    `threads` are the back end's inference threads (default: what torch uses, see cpu_features.inference_threads).
    """

    def __init__(
        self,
        encoder: CxrEncoder | None,
        *,
        batch_size: int = 32,
        bf16: bool | None = None,
        device: str = "cpu",
        model_id: str | None = None,
        backend: str | None = None,
        cache: Path | None = None,
        threads: int | None = None,
        checkpoint: Path | None = None,
        cache_keep: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if encoder is None and checkpoint is None:
            raise ValueError("give an encoder, or the checkpoint folder to load it from")
        self._encoder = None if encoder is None else encoder.to(device).eval()
        self._checkpoint = checkpoint
        self._load_lock = threading.Lock()
        self.config: EncoderConfig = (
            encoder.config
            if encoder is not None
            else EncoderConfig.from_dict(read_checkpoint_config(checkpoint_folder(checkpoint))["encoder"])
        )
        self.batch_size = batch_size
        self.device_name = device
        self.bf16 = (native_bf16_cpu() if device == "cpu" else bf16_supported(device)) if bf16 is None else bf16
        self.dim = self.config.embed_dim
        self.image_size = self.config.image_size
        self.model_id = model_id
        self.backend = backend or ("eager-bf16" if self.bf16 else "eager-fp32")
        if self.backend not in BACKENDS:
            raise ModelError(f"unknown inference back end {self.backend!r}; known: {', '.join(BACKENDS)}")
        if self.backend.startswith("eager"):
            self.bf16 = self.backend == "eager-bf16"
        self.threads = threads
        self._runner: Runner | None = None
        self._runner_lock = threading.Lock()
        self._cache = cache
        self._cache_keep = cache_keep

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
        cache_keep: int = 4,
        threads: int | None = None,
    ) -> BatchEncoder:
        """Load a checkpoint folder; `model_id` is its `checkpoint_id`. With an OpenVINO `backend` on the CPU, the
        converted and compiled model is kept under `cache_root/<key>` (services.embedding.openvino_cache; at most
        `cache_keep` keys), and the eager module loads now only when that cache is cold (so a bad checkpoint
        still fails here): on a warm cache, encoding needs neither torch nor the weights."""
        model_id = checkpoint_id(path)
        common = {"batch_size": batch_size, "bf16": bf16, "device": device, "model_id": model_id, "threads": threads}
        if cache_root is not None and backend in OPENVINO_BACKENDS and device == "cpu":
            cache = Path(cache_root) / checkpoint_cache_key(path, backend)
            encoder = cls(
                None, checkpoint=checkpoint_folder(path), backend=backend, cache=cache, cache_keep=cache_keep, **common
            )
            if not (cache / IR_DIR / IR_XML).is_file():
                _ = encoder.encoder  # a cold cache converts from the eager module: load (and check) it now
            return encoder
        from .checkpoint import load_checkpoint

        return cls(load_checkpoint(path), backend=backend, **common)

    @property
    def encoder(self) -> CxrEncoder:
        """The eager module, loaded from the checkpoint on first use (thread-safe)."""
        if self._encoder is None:
            with self._load_lock:
                if self._encoder is None:
                    from .checkpoint import load_checkpoint

                    if self.threads:  # torch loads here: give it the same threads as the back end
                        import torch

                        torch.set_num_threads(self.threads)
                    self._encoder = load_checkpoint(self._checkpoint).to(self.device_name).eval()
        return self._encoder

    @property
    def eager_loaded(self) -> bool:
        """Whether the eager module is in memory (with OpenVINO on a warm cache: only once something needed it)."""
        return self._encoder is not None

    @property
    def device(self) -> torch.device:
        import torch

        return torch.device(self.device_name)

    @property
    def runner_source(self) -> str | None:
        """Where the back end's model came from ("compiled-cache", "ir-cache", "converted", "uncached"); None for
        the eager path, or before the first `encode`."""
        return getattr(self._runner, "source", None)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """(N, S, S) grey images in [0, 1] -> (N, dim) float32 unit vectors; S is the model's image_size."""
        images = self._check(images)
        out = np.empty((len(images), self.dim), dtype=np.float32)
        if not self.backend.startswith("eager") and self.device_name.split(":")[0] == "cpu":
            with self._runner_lock:  # one runner, however many threads encode at once
                if self._runner is None:
                    self._runner = self._make_runner()
            for start in range(0, len(images), self.batch_size):
                vectors = self._runner(images[start : start + self.batch_size, None])
                norms = np.linalg.norm(vectors, axis=1, keepdims=True)
                out[start : start + len(vectors)] = vectors / np.maximum(norms, 1e-12)
            return out
        import torch
        import torch.nn.functional as F

        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16),
        ):
            for start in range(0, len(images), self.batch_size):
                batch = torch.from_numpy(images[start : start + self.batch_size]).unsqueeze(1).to(self.device_name)
                vectors = self.encoder(batch)
                # Renormalise in fp32: under autocast the head's output was rounded to bf16.
                out[start : start + len(batch)] = F.normalize(vectors.float(), dim=-1).cpu().numpy()
        return out

    def _make_runner(self) -> Runner:
        threads = self.threads or inference_threads()
        if self.backend in OPENVINO_BACKENDS:
            return openvino_runner(lambda: self.encoder, self.backend, threads, self._cache, keep_keys=self._cache_keep)
        return make_runner(self.encoder, self.backend, threads=threads, cache=self._cache)

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
