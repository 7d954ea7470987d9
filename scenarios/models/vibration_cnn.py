"""A 1D CNN for vibration windows (channels x samples): an ordinary nn.Module.

Residual blocks of two convolutions with batch norm, a global average pool and a linear
head; nothing in it is there for fedhq-sim. ``build`` is the factory a scenario names:
``model: {module: models/vibration_cnn.py, factory: build, args: {width: 32}}``; fedhq-sim
passes ``num_classes`` and ``input_shape`` because its signature takes them.
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(channels, channels, 5, padding=2, bias=False)
        self.bn1 = nn.BatchNorm1d(channels)
        self.conv2 = nn.Conv1d(channels, channels, 5, padding=2, bias=False)
        self.bn2 = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(out)))


class VibrationCNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 32, blocks: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv1d(in_channels, width, 7, stride=2, padding=3, bias=False), nn.BatchNorm1d(width), nn.ReLU()
        )
        self.blocks = nn.Sequential(*[ResidualBlock(width) for _ in range(blocks)])
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(x.mean(dim=2))


def build(num_classes: int, input_shape: tuple[int, ...], width: int = 32, blocks: int = 2) -> VibrationCNN:
    """The model for windows of ``input_shape`` = (channels, samples)."""
    return VibrationCNN(input_shape[0], num_classes, width, blocks)
