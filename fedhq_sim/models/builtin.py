"""The built-in models: ordinary ``nn.Module``s, sized for the built-in datasets.

They are small stand-ins for a plant's model (tens of thousands of parameters, for 8x8
digits and 16 sensor readings), chosen so that the shipped scenarios train in seconds; a
plant names its own model in the scenario (see :mod:`fedhq_sim.models.registry`). Nothing
in them is there for quantization: the backend quantizes any conv and linear layer.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedhq_sim.models.registry import IMAGE_INPUT, register_model

STAND_IN_MODELS = frozenset({"small_cnn", "resnet8", "mlp"})
"""The built-ins: a run of one says in its report that the model is a small stand-in."""


def _require_images(model: str, input_shape: tuple[int, ...]) -> None:
    if tuple(input_shape) != IMAGE_INPUT:
        raise ValueError(f"{model} takes {IMAGE_INPUT} images, got inputs of shape {tuple(input_shape)}")


@register_model("small_cnn")
class SmallCNN(nn.Module):
    """Two conv+ReLU+pool blocks and a linear head, sized for 8x8 single-channel images."""

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, ...] = IMAGE_INPUT) -> None:
        _require_images("small_cnn", input_shape)
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.fc = nn.Linear(32 * 2 * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


@register_model("mlp")
class MLP(nn.Module):
    """A two-hidden-layer perceptron over the flattened input: tabular sensor readings."""

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, ...] = IMAGE_INPUT, hidden: int = 64) -> None:
        super().__init__()
        in_features = math.prod(input_shape)
        self.fc1 = nn.Linear(in_features, hidden)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.fc1(torch.flatten(x, 1)))
        return self.fc3(self.relu2(self.fc2(x)))


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers and a shortcut (1x1 conv+BN where the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return torch.relu(out + self.shortcut(x))


@register_model("resnet8")
class ResNet8(nn.Module):
    """A ResNet-8 (stem conv, three basic blocks of 16/32/64 channels, linear head).

    The CIFAR-style ResNet of He et al. (2016) cut to one block per stage, as in the tinyML
    and FL literature (e.g. MLPerf Tiny's ResNet-8); here sized for 8x8 single-channel inputs.
    """

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, ...] = IMAGE_INPUT) -> None:
        _require_images("resnet8", input_shape)
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.block1 = BasicBlock(16, 16, stride=1)
        self.block2 = BasicBlock(16, 32, stride=2)
        self.block3 = BasicBlock(32, 64, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.conv(x)))
        x = self.block3(self.block2(self.block1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


@register_model("cnn1d")
class CNN1d(nn.Module):
    """Four conv+BN+ReLU blocks over a sequence ``(channels, length)``, the first three each
    followed by a max pool of 2, then global average pooling and a linear head: the size of a
    load-identification model on a submeter (about 14.6 k parameters for PLAID's one channel
    and 11 classes). Wide first kernels see a switch-on transient whole."""

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, ...] = (1, 128)) -> None:
        if len(input_shape) != 2:
            raise ValueError(f"cnn1d takes sequences (channels, length), got inputs of shape {tuple(input_shape)}")
        super().__init__()
        channels = (input_shape[0], 16, 32, 40, 40)
        kernels = (7, 5, 5, 3)
        layers: list[nn.Module] = []
        for i, kernel in enumerate(kernels):
            layers += [
                nn.Conv1d(channels[i], channels[i + 1], kernel, padding=kernel // 2, bias=False),
                nn.BatchNorm1d(channels[i + 1]),
                nn.ReLU(),
            ]
            if i < len(kernels) - 1:
                layers.append(nn.MaxPool1d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))
