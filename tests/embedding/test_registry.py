"""The shape registry and EncoderConfig: right sizes, a faithful dict round trip, clear rejections."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from services.embedding import SHAPES, EncoderConfig, ModelShape, create_encoder
from services.errors import ModelError

EXPECTED = {
    "vit-tiny": (192, 12, 3, 768),
    "vit-small": (384, 12, 6, 1536),
    "vit-base": (768, 12, 12, 3072),
    "hybrid-lite0": (192, 6, 3, 768),
    "hybrid-lite1": (192, 6, 3, 768),
}


def test_registry_holds_the_vit_and_hybrid_shapes() -> None:
    assert set(SHAPES) == set(EXPECTED)
    for name, dims in EXPECTED.items():
        shape = SHAPES[name]
        assert isinstance(shape, ModelShape)
        assert (shape.hidden_size, shape.num_layers, shape.num_heads, shape.mlp_dim, shape.patch_size) == (
            *dims,
            16,
        )


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_shape_builds_with_its_sizes(name: str) -> None:
    hidden, layers, heads, mlp = EXPECTED[name]
    with torch.device("meta"):  # sizes only; no memory or init time for vit-base
        encoder = create_encoder(name, image_size=64, pretrained=False)  # weights cannot load on meta
    vit = encoder.vit
    linears = [m for m in vit.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 6 * layers  # q, k, v, out, and the two MLP layers per block
    assert sum(m.weight.shape == (mlp, hidden) for m in linears) == layers
    assert all(m.bias is not None for m in linears)  # qkv_bias, like timm
    assert vit.config.num_attention_heads == heads
    tokens_from = (112, 1, 1) if SHAPES[name].stem != "patch" else (1, 16, 16)  # CNN map or 16 px patches
    assert vit.embeddings.patch_embeddings.projection.weight.shape == (hidden, *tokens_from)
    assert vit.embeddings.position_embeddings.shape == (1, (64 // 16) ** 2 + 1, hidden)
    assert vit.layernorm.eps == pytest.approx(1e-6)
    assert encoder.head.weight.shape == (hidden, hidden)  # embed_dim defaults to the hidden size
    assert encoder.config.shape == name


def test_default_is_vit_small_with_384_dim_embeddings() -> None:
    config = EncoderConfig()
    assert (config.shape, config.hidden_size, config.embed_dim, config.image_size) == (
        "vit-small",
        384,
        384,
        224,
    )
    assert (config.num_channels, config.pooling, config.head) == (1, "cls", "linear")


def test_unknown_shape_lists_the_known_ones() -> None:
    with pytest.raises(ModelError, match="vit-tiny, vit-small, vit-base"):
        create_encoder("vit-huge")


def test_dict_round_trip() -> None:
    config = EncoderConfig(shape="vit-tiny", image_size=64, embed_dim=128, recipe={"loss": "ntxent", "lr": 1e-4})
    again = EncoderConfig.from_dict(config.to_dict())
    assert again == config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "blue"}, "unknown keys"),
        ({"image_size": None}, "image_size must be int"),
        ({"qkv_bias": 1}, "qkv_bias must be bool"),
        ({"embed_dim": True}, "embed_dim must be int"),
        ({"head": "mlp"}, "unknown head"),
        ({"image_size": 50}, "not a multiple of patch_size"),
    ],
)
def test_from_dict_rejects_bad_values(change: dict, message: str) -> None:
    data = EncoderConfig(shape="vit-tiny").to_dict() | change
    with pytest.raises(ModelError, match=message):
        EncoderConfig.from_dict(data)


def test_from_dict_rejects_missing_essentials_but_not_the_recipe() -> None:
    data = EncoderConfig(shape="vit-tiny").to_dict()
    del data["recipe"], data["version"]
    assert EncoderConfig.from_dict(data).recipe == {}
    del data["norm_std"]
    with pytest.raises(ModelError, match="missing keys.*norm_std"):
        EncoderConfig.from_dict(data)


def test_head_none_needs_embed_dim_equal_to_hidden() -> None:
    assert EncoderConfig(shape="vit-tiny", head="none").embed_dim == 192
    with pytest.raises(ModelError, match="head 'none'"):
        EncoderConfig(shape="vit-tiny", head="none", embed_dim=128)
