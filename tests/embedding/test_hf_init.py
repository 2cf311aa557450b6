"""--init from a local Hugging Face ViT folder: weights copied, outputs match transformers, any image size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import ViTModel

from services.embedding import create_encoder, load_checkpoint, save_checkpoint
from services.errors import ModelError


def _hf_cls(folder: Path, images: torch.Tensor, *, interpolate: bool) -> torch.Tensor:
    """The reference: transformers' own ViT on the grey image repeated to 3 channels, HF's 0.5/0.5 norm."""
    hf = ViTModel.from_pretrained(folder, local_files_only=True, add_pooling_layer=False).eval()
    x = ((images - 0.5) / 0.5).expand(-1, 3, -1, -1)
    with torch.no_grad():
        return hf(pixel_values=x, interpolate_pos_encoding=interpolate).last_hidden_state[:, 0]


def test_init_copies_the_weights_and_config(hf_vit_dir: Path) -> None:
    hf = ViTModel.from_pretrained(hf_vit_dir, local_files_only=True, add_pooling_layer=False)
    encoder = create_encoder(init=hf_vit_dir, image_size=32, embed_dim=16, seed=0)
    config = encoder.config
    assert (config.hidden_size, config.num_layers, config.num_heads, config.mlp_dim) == (64, 2, 2, 128)
    assert (config.patch_size, config.num_channels, config.shape) == (8, 3, "custom")
    assert config.layer_norm_eps == pytest.approx(1e-12)  # HF's default, kept so a reload is exact
    ours, theirs = encoder.vit.state_dict(), hf.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_init_matches_transformers_at_the_native_size(hf_vit_dir: Path) -> None:
    images = torch.rand(3, 1, 32, 32)
    encoder = create_encoder(init=hf_vit_dir, image_size=32).eval()
    with torch.no_grad():
        feats = encoder.features(images)
    torch.testing.assert_close(feats, _hf_cls(hf_vit_dir, images, interpolate=False))


def test_init_at_another_size_matches_interpolated_positions(hf_vit_dir: Path, tmp_path: Path) -> None:
    images = torch.rand(2, 1, 48, 48)
    encoder = create_encoder(init=hf_vit_dir, image_size=48, seed=0).eval()
    assert encoder.vit.embeddings.position_embeddings.shape == (1, 36 + 1, 64)
    with torch.no_grad():
        feats, out = encoder.features(images), encoder(images)
    torch.testing.assert_close(feats, _hf_cls(hf_vit_dir, images, interpolate=True))
    assert out.shape == (2, 64)
    reloaded = load_checkpoint(save_checkpoint(encoder, tmp_path / "ck"))
    with torch.no_grad():
        assert torch.equal(reloaded(images), out)
    assert reloaded.config.recipe["init"] == str(hf_vit_dir.resolve())


def test_init_reads_the_processor_normalisation(hf_vit_dir: Path) -> None:
    processor = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    (hf_vit_dir / "preprocessor_config.json").write_text(json.dumps(processor))
    config = create_encoder(init=hf_vit_dir, image_size=32).config
    assert config.norm_mean == pytest.approx(0.449)
    assert config.norm_std == pytest.approx(0.226)


def test_init_refuses_non_vit_or_weightless_folders(hf_vit_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no config.json"):
        create_encoder(init=tmp_path / "empty")
    doc = json.loads((hf_vit_dir / "config.json").read_text())
    (hf_vit_dir / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="no weights"):
        create_encoder(init=hf_vit_dir, image_size=32)
    (hf_vit_dir / "config.json").write_text(json.dumps(doc | {"model_type": "deit"}))
    with pytest.raises(ModelError, match="not 'vit'"):
        create_encoder(init=hf_vit_dir, image_size=32)
