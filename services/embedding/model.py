"""The encoder: a ViT (CLS token after the final layer norm) and a projection head (the MIDL 2024 recipe).

`create_encoder` is the one factory: a registry shape at random init, or a local Hugging Face ViT folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import ViTConfig, ViTModel

from services.errors import ModelError

from .registry import LITE_STEMS, EncoderConfig, get_shape, shape_name_for

log = logging.getLogger(__name__)

_HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def vit_config(config: EncoderConfig) -> ViTConfig:
    """The transformers ViTConfig for an encoder config (no dropout: the recipe does not use it)."""
    return ViTConfig(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.mlp_dim,
        hidden_act=config.hidden_act,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=config.layer_norm_eps,
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_channels=config.num_channels,
        qkv_bias=config.qkv_bias,
        attn_implementation="sdpa",
    )


class HybridPatchEmbeddings(nn.Module):
    """Patch tokens from a CNN feature map: EfficientNet-Lite0 or -Lite1 to stride 16, then a 1x1 projection to
    the transformer width. Drop-in for transformers' ViTPatchEmbeddings ((B, C, H, W) -> (B, N, hidden))."""

    def __init__(self, hidden_size: int, variant: str = "lite0") -> None:
        super().__init__()
        from .lite import STRIDE16_CHANNELS, LiteStem

        self.stem = LiteStem(variant)
        self.projection = nn.Conv2d(STRIDE16_CHANNELS, hidden_size, kernel_size=1)
        self._channels_last = False

    def _use_channels_last(self) -> None:
        # Depthwise convolutions run 1.5-2.5x faster on the CPU in channels-last layout. Done on first use, not at
        # build time, because loading a checkpoint replaces the parameters with plain contiguous tensors. Never as
        # inference tensors: a first call under inference_mode would leave weights that tracing (OpenVINO) refuses.
        with torch.inference_mode(False):
            for p in self.parameters():
                if p.ndim == 4:
                    p.data = p.data.contiguous(memory_format=torch.channels_last)
        self._channels_last = True

    def forward(self, pixel_values: Tensor, interpolate_pos_encoding: bool = False) -> Tensor:
        if not self._channels_last:
            self._use_channels_last()
        # The stem always runs in fp32: under bf16 autocast its batch norms and depthwise convolutions drift
        # (embedding cosine to fp32 fell to 0.70, top-10 overlap to 0.65 on a trained model); with the stem in
        # fp32 and the transformer in bf16 the cosine is > 0.9999 (benchmarks/encoder_speed.py).
        with torch.autocast(pixel_values.device.type, enabled=False):
            x = self.stem(pixel_values.float().contiguous(memory_format=torch.channels_last))
            return self.projection(x).flatten(2).transpose(1, 2)


class CxrEncoder(nn.Module):
    """Grey images in [0, 1] -> L2-normalised embeddings; normalisation and channel repeat happen inside."""

    def __init__(self, config: EncoderConfig, vit: ViTModel | None = None) -> None:
        super().__init__()
        self.config = config
        self.vit = vit if vit is not None else ViTModel(vit_config(config), add_pooling_layer=False)
        if self.vit.config.hidden_size != config.hidden_size or self.vit.config.image_size != config.image_size:
            raise ModelError("encoder config does not match the ViT it wraps (hidden_size or image_size differ)")
        if config.stem in LITE_STEMS:
            self.vit.embeddings.patch_embeddings = HybridPatchEmbeddings(config.hidden_size, config.stem)
        if config.head == "linear":
            # No bias, like CLIP's projection: the output is L2-normalised anyway.
            self.head: nn.Module = nn.Linear(config.hidden_size, config.embed_dim, bias=False)
        else:
            self.head = nn.Identity()

    def features(self, images: Tensor) -> Tensor:
        """Pooled CLS features (B, hidden_size) before the head, e.g. for a cross-entropy baseline."""
        size = self.config.image_size
        if images.ndim != 4 or images.shape[1] != 1 or images.shape[2:] != (size, size):
            raise ValueError(f"expected images of shape (B, 1, {size}, {size}), got {tuple(images.shape)}")
        x = (images - self.config.norm_mean) / self.config.norm_std
        if self.config.num_channels > 1:
            x = x.expand(-1, self.config.num_channels, -1, -1)
        return self.vit(pixel_values=x).last_hidden_state[:, 0]

    def forward(self, images: Tensor) -> Tensor:
        """(B, 1, S, S) in [0, 1] -> (B, embed_dim) float32 unit vectors (normalised in fp32 under bf16)."""
        return F.normalize(self.head(self.features(images)).float(), dim=-1)


def create_encoder(
    shape: str = "vit-small",
    *,
    image_size: int = 224,
    embed_dim: int | None = None,
    head: str = "linear",
    init: str | Path | None = None,
    seed: int | None = None,
    pretrained: bool = True,
) -> CxrEncoder:
    """Build an encoder: a registry shape at random init, or the Hugging Face ViT folder `init`.

    With `init`, that checkpoint's config decides width, depth, heads, patch size and channels (`shape` is not
    used); its position embeddings are resampled once to `image_size`, exactly as transformers'
    `interpolate_pos_encoding` would at every forward. `seed` makes the random parts reproducible.
    A hybrid shape (stem "lite0" or "lite1") starts its CNN stem from that variant's ImageNet weights unless
    `pretrained=False`; its input normalisation is ImageNet's, applied inside the stem.
    """
    # Fork the global RNG only when seeding, so unseeded calls still draw fresh weights each time.
    with torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext():
        if seed is not None:
            torch.manual_seed(seed)
        if init is None:
            stem = get_shape(shape).stem
            hybrid = stem in LITE_STEMS
            norm = {"norm_mean": 0.0, "norm_std": 1.0} if hybrid else {}  # the stem normalises as ImageNet did
            config = EncoderConfig(shape=shape, image_size=image_size, embed_dim=embed_dim or 0, head=head, **norm)
            encoder = CxrEncoder(config)
            if hybrid and pretrained:
                from .lite import load_imagenet

                load_imagenet(encoder.vit.embeddings.patch_embeddings.stem)
                config.recipe = {**config.recipe, "stem_init": f"imagenet-efficientnet-{stem}"}
        else:
            vit, norm_mean, norm_std = _load_hf_vit(Path(init), image_size)
            c = vit.config
            config = EncoderConfig(
                shape=shape_name_for(
                    c.hidden_size,
                    c.num_hidden_layers,
                    c.num_attention_heads,
                    c.intermediate_size,
                    c.patch_size,
                ),
                image_size=image_size,
                patch_size=c.patch_size,
                hidden_size=c.hidden_size,
                num_layers=c.num_hidden_layers,
                num_heads=c.num_attention_heads,
                mlp_dim=c.intermediate_size,
                num_channels=c.num_channels,
                embed_dim=embed_dim or 0,
                head=head,
                norm_mean=norm_mean,
                norm_std=norm_std,
                layer_norm_eps=float(c.layer_norm_eps),
                hidden_act=c.hidden_act,
                qkv_bias=bool(c.qkv_bias),
                recipe={"init": str(Path(init).resolve())},
            )
            encoder = CxrEncoder(config, vit)
    return encoder


def _load_hf_vit(folder: Path, image_size: int) -> tuple[ViTModel, float, float]:
    """A local Hugging Face ViT resized to `image_size`, with the input normalisation its processor used."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelError(f"{folder}: no config.json; --init needs a Hugging Face ViT checkpoint folder")
    try:
        raw = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{config_path}: unreadable ({exc})") from exc
    if raw.get("model_type") != "vit":
        raise ModelError(f"{config_path}: model_type is {raw.get('model_type')!r}, not 'vit'")
    if not any((folder / name).is_file() for name in _HF_WEIGHT_FILES):
        raise ModelError(f"{folder}: no weights ({' or '.join(_HF_WEIGHT_FILES)})")
    hf_size, patch = raw.get("image_size", 224), raw.get("patch_size", 16)
    if not isinstance(hf_size, int) or not isinstance(patch, int):
        raise ModelError(f"{config_path}: only square images and patches are supported")
    if image_size % patch:
        raise ModelError(f"image_size {image_size} is not a multiple of the checkpoint's patch_size {patch}")
    try:
        vit, info = ViTModel.from_pretrained(
            folder,
            local_files_only=True,
            add_pooling_layer=False,
            output_loading_info=True,
            attn_implementation="sdpa",
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{folder}: cannot load the Hugging Face ViT ({exc})") from exc
    missing = [k for k in info.get("missing_keys", []) if not k.startswith("pooler.")]
    if missing or info.get("mismatched_keys"):
        raise ModelError(
            f"{folder}: weights do not fit the ViT config (missing {missing[:5]}, "
            f"mismatched {list(info.get('mismatched_keys', []))[:5]})"
        )
    if image_size != hf_size:
        _resize_position_embeddings(vit, image_size)
    vit.float()
    return (vit, *_processor_norm(folder))


def _resize_position_embeddings(vit: ViTModel, image_size: int) -> None:
    """Resample the position embeddings once to a new square image size (transformers' own bicubic rule)."""
    emb = vit.embeddings
    grid = image_size // vit.config.patch_size
    dummy = torch.empty(1, grid * grid + 1, vit.config.hidden_size)
    with torch.no_grad():
        resized = emb.interpolate_pos_encoding(dummy, image_size, image_size).clone()
    emb.position_embeddings = nn.Parameter(resized)
    emb.patch_embeddings.image_size = (image_size, image_size)
    emb.patch_embeddings.num_patches = grid * grid
    emb.image_size = (image_size, image_size)
    vit.config.image_size = image_size


def _processor_norm(folder: Path) -> tuple[float, float]:
    """Mean/std from preprocessor_config.json (channel average: grey is repeated), else HF's 0.5/0.5."""
    mean, std = 0.5, 0.5
    path = folder / "preprocessor_config.json"
    if path.is_file():
        try:
            raw = json.loads(path.read_text())
            mean = sum(raw["image_mean"]) / len(raw["image_mean"])
            std = sum(raw["image_std"]) / len(raw["image_std"])
        except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
            log.warning("%s: unreadable image_mean/image_std; using 0.5/0.5", path)
    return float(mean), float(std)
