"""A MobileNetV2 (Sandler et al., CVPR 2018) for visual inspection: an ordinary nn.Module.

Nothing in it is there for fedhq-sim: no quantization stubs, no fuse lists. A scenario names
it as ``model: {module: models/mobilenet_v2.py, factory: MobileNetV2, args: {width: 1.0}}``;
fedhq-sim passes ``num_classes`` because the constructor takes it. At width 1.0 it has
2.2 M parameters, the size of the visual-inspection models plants deploy at 96-128 px.
"""

from __future__ import annotations

import torch
from torch import nn

# (expansion, output channels, blocks, first stride): the paper's Table 2.
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _channels(value: float, divisor: int = 8) -> int:
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = [] if expansion == 1 else [ConvBNReLU(cin, hidden, kernel=1)]
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        channels = _channels(32 * width)
        layers: list[nn.Module] = [ConvBNReLU(in_channels, channels, stride=2)]
        for expansion, out, blocks, stride in STAGES:
            out = _channels(out * width)
            for index in range(blocks):
                layers.append(InvertedResidual(channels, out, stride if index == 0 else 1, expansion))
                channels = out
        last = _channels(1280 * max(1.0, width))
        layers.append(ConvBNReLU(channels, last, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
