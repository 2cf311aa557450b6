"""Pixels -> vectors: model shapes, the ViT encoder with its projection head, checkpoints, batched inference.

The recipe follows "Analysis of Transformers for Medical Image Retrieval" (MIDL 2024): ViT-S/16, CLS token,
contrastive training. Training lives in services.training; this package only builds, stores and runs encoders.
"""

from .batch import BatchEncoder, bf16_supported
from .checkpoint import checkpoint_id, load_checkpoint, save_checkpoint
from .model import CxrEncoder, create_encoder
from .registry import SHAPES, EncoderConfig, ModelShape

__all__ = [
    "SHAPES",
    "BatchEncoder",
    "CxrEncoder",
    "EncoderConfig",
    "ModelShape",
    "bf16_supported",
    "checkpoint_id",
    "create_encoder",
    "load_checkpoint",
    "save_checkpoint",
]
