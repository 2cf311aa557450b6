"""The encoder's forward: unit-length float32 vectors of embed_dim, CLS features, input checks, seeding."""

from __future__ import annotations

import pytest
import torch

from services.embedding import CxrEncoder, create_encoder

SIZE = 32


def test_forward_gives_unit_float32_vectors_of_embed_dim(images: torch.Tensor) -> None:
    encoder = create_encoder("vit-tiny", image_size=SIZE, embed_dim=48, seed=0).eval()
    with torch.no_grad():
        out = encoder(images)
    assert out.shape == (len(images), 48)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(len(images)))


def test_features_are_the_cls_token_after_the_final_norm(tiny_encoder: CxrEncoder, images: torch.Tensor) -> None:
    with torch.no_grad():
        feats = tiny_encoder.features(images)
        hidden = tiny_encoder.vit(pixel_values=(images - 0.5) / 0.25).last_hidden_state
    assert feats.shape == (len(images), 192)
    torch.testing.assert_close(feats, hidden[:, 0])


def test_head_none_is_the_normalised_cls_feature(images: torch.Tensor) -> None:
    encoder = create_encoder("vit-tiny", image_size=SIZE, head="none", seed=0).eval()
    with torch.no_grad():
        out, feats = encoder(images), encoder.features(images)
    torch.testing.assert_close(out, torch.nn.functional.normalize(feats, dim=-1))


def test_seed_makes_weights_reproducible_without_touching_global_rng() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = create_encoder("vit-tiny", image_size=SIZE, seed=7)
    b = create_encoder("vit-tiny", image_size=SIZE, seed=7)
    assert torch.equal(torch.rand(1), before)
    assert torch.equal(a.head.weight, b.head.weight)
    c = create_encoder("vit-tiny", image_size=SIZE)
    d = create_encoder("vit-tiny", image_size=SIZE)
    assert not torch.equal(c.head.weight, d.head.weight)


@pytest.mark.parametrize("shape", [(2, 32, 32), (2, 3, 32, 32), (2, 1, 48, 48)])
def test_forward_rejects_wrong_input_shapes(tiny_encoder: CxrEncoder, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\(B, 1, 32, 32\)"):
        tiny_encoder(torch.rand(shape))


def test_gradients_flow_for_training(images: torch.Tensor) -> None:
    """Every trainable parameter gets a non-zero gradient from a cosine loss (a None or all-zero grad fails)."""
    encoder = create_encoder("vit-tiny", image_size=SIZE, seed=0).train()
    target = torch.nn.functional.normalize(torch.randn(len(images), encoder.config.embed_dim), dim=1)
    (1 - (encoder(images) * target).sum(dim=1)).mean().backward()
    dead = [n for n, p in encoder.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not dead, dead
