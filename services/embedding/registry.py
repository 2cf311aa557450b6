"""Model shapes and the encoder config: the data that decides what `create_encoder` builds.

A checkpoint carries its `EncoderConfig` (config.json), so it can be rebuilt without the code that trained it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from services import __version__
from services.errors import ModelError


@dataclass(frozen=True)
class ModelShape:
    """The size of a ViT: width, depth, heads, MLP width and patch size."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    patch_size: int = 16
    # "patch": linear patch embedding; "lite0"/"lite1": pretrained EfficientNet-Lite0/-Lite1 to stride 16
    stem: str = "patch"


SHAPES: dict[str, ModelShape] = {
    s.name: s
    for s in (
        ModelShape("vit-tiny", hidden_size=192, num_layers=12, num_heads=3, mlp_dim=768),
        ModelShape("vit-small", hidden_size=384, num_layers=12, num_heads=6, mlp_dim=1536),
        ModelShape("vit-base", hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072),
        # Hybrid ViT (Dosovitskiy et al. 2021): tokens from the ImageNet EfficientNet-Lite0 feature map at
        # stride 16, then a 6-layer ViT-Tiny-width encoder with a CLS token.
        ModelShape("hybrid-lite0", hidden_size=192, num_layers=6, num_heads=3, mlp_dim=768, stem="lite0"),
        # The same with EfficientNet-Lite1's stem: depth 1.1 (15 blocks to stride 16, not 11), same 112 channels.
        ModelShape("hybrid-lite1", hidden_size=192, num_layers=6, num_heads=3, mlp_dim=768, stem="lite1"),
    )
}

# The shape name recorded for a checkpoint initialised from a Hugging Face ViT that matches no registry shape.
CUSTOM_SHAPE = "custom"
HEADS = ("linear", "none")
LITE_STEMS = ("lite0", "lite1")  # EfficientNet-Lite variants to stride 16 (services/embedding/lite.py)
# The default model shape: the candidate with the best validation MAP@R in benchmarks.headline (README, Results;
# benchmarks/results/headline.json records every candidate).
DEFAULT_SHAPE = "hybrid-lite1"
STEMS = ("patch", *LITE_STEMS)
POOLINGS = ("cls",)


def get_shape(name: str) -> ModelShape:
    """The registry shape called `name`; a ModelError lists the known ones otherwise."""
    try:
        return SHAPES[name]
    except KeyError:
        known = ", ".join(SHAPES)
        raise ModelError(f"unknown model shape {name!r}; known shapes: {known}", f"Use one of: {known}.") from None


def shape_name_for(hidden_size: int, num_layers: int, num_heads: int, mlp_dim: int, patch_size: int) -> str:
    """The registry name whose dimensions match exactly, else "custom"."""
    for shape in SHAPES.values():
        if (shape.hidden_size, shape.num_layers, shape.num_heads, shape.mlp_dim, shape.patch_size) == (
            hidden_size,
            num_layers,
            num_heads,
            mlp_dim,
            patch_size,
        ):
            return shape.name
    return CUSTOM_SHAPE


@dataclass
class EncoderConfig:
    """Everything needed to rebuild and use an encoder; serialised to a checkpoint's config.json.

    Zero in `hidden_size`, `num_layers`, `num_heads` or `mlp_dim` means "take it from the shape";
    `embed_dim=0` means "the hidden size" (384 for vit-small, the paper's ViT-S/16).
    """

    shape: str = "vit-small"
    image_size: int = 224
    patch_size: int = 16
    hidden_size: int = 0
    num_layers: int = 0
    num_heads: int = 0
    mlp_dim: int = 0
    num_channels: int = 1  # grey input is repeated to this many channels inside the model
    embed_dim: int = 0
    head: str = "linear"
    pooling: str = "cls"
    norm_mean: float = 0.5  # the model normalises its [0, 1] input itself: (x - mean) / std
    norm_std: float = 0.25
    # Kept so Hugging Face inits (eps 1e-12, other activations) rebuild exactly; defaults follow timm's ViT.
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu"
    qkv_bias: bool = True
    stem: str = "patch"  # set from the shape; see ModelShape.stem
    recipe: dict[str, Any] = field(default_factory=dict)
    version: str = __version__

    def __post_init__(self) -> None:
        if self.shape != CUSTOM_SHAPE and 0 in (
            self.hidden_size,
            self.num_layers,
            self.num_heads,
            self.mlp_dim,
        ):
            shape = get_shape(self.shape)
            self.hidden_size = self.hidden_size or shape.hidden_size
            self.num_layers = self.num_layers or shape.num_layers
            self.num_heads = self.num_heads or shape.num_heads
            self.mlp_dim = self.mlp_dim or shape.mlp_dim
        if self.shape in SHAPES and SHAPES[self.shape].stem != "patch":
            self.stem = SHAPES[self.shape].stem
        self.embed_dim = self.embed_dim or self.hidden_size
        self._validate()

    def _validate(self) -> None:
        for name in ("image_size", "patch_size", "hidden_size", "num_layers", "num_heads", "mlp_dim"):
            if getattr(self, name) <= 0:
                raise ModelError(f"encoder config: {name} must be positive (shape {self.shape!r})")
        if self.num_channels <= 0 or self.embed_dim <= 0:
            raise ModelError("encoder config: num_channels and embed_dim must be positive")
        if self.image_size % self.patch_size:
            raise ModelError(
                f"encoder config: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.hidden_size % self.num_heads:
            raise ModelError(
                f"encoder config: hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.head not in HEADS:
            raise ModelError(f"encoder config: unknown head {self.head!r}; known: {', '.join(HEADS)}")
        if self.head == "none" and self.embed_dim != self.hidden_size:
            raise ModelError(
                f"encoder config: head 'none' needs embed_dim == hidden_size ({self.hidden_size}), "
                f"got {self.embed_dim}",
                "Use head='linear' for a different embedding size.",
            )
        if self.stem not in STEMS:
            raise ModelError(f"encoder config: unknown stem {self.stem!r}; known: {', '.join(STEMS)}")
        if self.stem in LITE_STEMS and self.patch_size != 16:
            raise ModelError(
                f"encoder config: the {self.stem} stem makes tokens at stride 16, so patch_size must be 16"
            )
        if self.pooling not in POOLINGS:
            raise ModelError(f"encoder config: unknown pooling {self.pooling!r}; known: {', '.join(POOLINGS)}")
        if not self.norm_std > 0:
            raise ModelError(f"encoder config: norm_std must be positive, got {self.norm_std}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        """Rebuild from `to_dict` output; unknown keys, missing essentials or wrong types raise ModelError."""
        if not isinstance(data, dict):
            raise ModelError(f"encoder config: expected a JSON object, got {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ModelError(
                f"encoder config: unknown keys {unknown}",
                "The checkpoint was written by a different cxr version; upgrade cxr or retrain.",
            )
        missing = sorted(k for k in known if k not in _OPTIONAL_KEYS and k not in data)
        if missing:
            raise ModelError(f"encoder config: missing keys {missing}")
        for key, value in data.items():
            expected = _FIELD_TYPES[key]
            # bool is an int subclass; a JSON true must not pass as a size.
            ok = isinstance(value, expected) and not (isinstance(value, bool) and bool not in expected)
            if not ok:
                names = "/".join(t.__name__ for t in expected)
                raise ModelError(f"encoder config: {key} must be {names}, got {value!r}")
        return cls(**data)


_OPTIONAL_KEYS = frozenset({"recipe", "version", "stem"})
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "shape": (str,),
    "image_size": (int,),
    "patch_size": (int,),
    "hidden_size": (int,),
    "num_layers": (int,),
    "num_heads": (int,),
    "mlp_dim": (int,),
    "num_channels": (int,),
    "embed_dim": (int,),
    "head": (str,),
    "pooling": (str,),
    "norm_mean": (float, int),
    "norm_std": (float, int),
    "layer_norm_eps": (float, int),
    "hidden_act": (str,),
    "qkv_bias": (bool,),
    "stem": (str,),
    "recipe": (dict,),
    "version": (str,),
}
