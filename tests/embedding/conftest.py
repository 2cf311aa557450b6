"""Fixtures for the encoder tests: a tiny random encoder and a tiny Hugging Face ViT folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.embedding import CxrEncoder, create_encoder

SIZE = 32  # vit-tiny at 32 px: 4 patches, fast enough for every test


@pytest.fixture()
def tiny_encoder() -> CxrEncoder:
    return create_encoder("vit-tiny", image_size=SIZE, seed=0).eval()


@pytest.fixture()
def images() -> torch.Tensor:
    return torch.rand(5, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


@pytest.fixture()
def hf_vit_dir(tmp_path: Path) -> Path:
    """A small 3-channel Hugging Face ViT saved with save_pretrained, like a downloaded checkpoint."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(2)
    config = ViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        image_size=32,
        patch_size=8,
        num_channels=3,
    )
    folder = tmp_path / "hf-vit"
    ViTModel(config).save_pretrained(folder)
    return folder
