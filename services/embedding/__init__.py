"""Pixels -> vectors: model shapes, the ViT encoder with its projection head, checkpoints, batched inference.

The recipe follows "Analysis of Transformers for Medical Image Retrieval" (MIDL 2024): ViT-S/16, CLS token,
contrastive training. Training lives in services.training; this package only builds, stores and runs encoders.

Names are imported on first use (PEP 562): `checkpoint_id` and `native_bf16_cpu` come without torch, so light
commands (`cxr info`) can use them. `BatchEncoder` loads torch only when it needs the eager module: with an OpenVINO
back end and a warm model cache (openvino_cache) it encodes without it. The rest loads torch and transformers.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "BatchEncoder": "services.embedding.batch",
    "bf16_supported": "services.embedding.batch",
    "checkpoint_id": "services.embedding.checkpoint_meta",
    "read_checkpoint_config": "services.embedding.checkpoint_meta",
    "load_checkpoint": "services.embedding.checkpoint",
    "save_checkpoint": "services.embedding.checkpoint",
    "CxrEncoder": "services.embedding.model",
    "create_encoder": "services.embedding.model",
    "native_bf16_cpu": "services.embedding.cpu_features",
    "SHAPES": "services.embedding.registry",
    "EncoderConfig": "services.embedding.registry",
    "ModelShape": "services.embedding.registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'services.embedding' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
