"""Model architectures that work under fp32, PTQ and QAT in eager mode.

Each model wraps its body in ``QuantStub``/``DeQuantStub`` and lists the layer groups that
eager quantization fuses (conv+relu, linear+relu), so the same class serves all three
strategies. Models are built from a name in the scenario through :data:`MODELS`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.ao.quantization import DeQuantStub, QuantStub


class SmallCNN(nn.Module):
    """Two conv+ReLU+pool blocks and a linear head, sized for 8x8 single-channel images."""

    fuse_groups = (("conv1", "relu1"), ("conv2", "relu2"))

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.fc = nn.Linear(32 * 2 * 2, num_classes)
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant(x)
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.dequant(self.fc(torch.flatten(x, 1)))


class MLP(nn.Module):
    """A two-hidden-layer perceptron over the flattened input (tabular sensor style)."""

    fuse_groups = (("fc1", "relu1"), ("fc2", "relu2"))

    def __init__(self, num_classes: int = 10, in_features: int = 64, hidden: int = 64) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.fc1 = nn.Linear(in_features, hidden)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(hidden, num_classes)
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant(torch.flatten(x, 1))
        x = self.relu2(self.fc2(self.relu1(self.fc1(x))))
        return self.dequant(self.fc3(x))


MODELS: dict[str, Callable[[int], nn.Module]] = {"small_cnn": SmallCNN, "mlp": MLP}


def build_model(name: str, num_classes: int, seed: int) -> nn.Module:
    """A freshly initialised model; the same ``seed`` gives the same weights on any host."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return MODELS[name](num_classes)
    finally:
        torch.random.set_rng_state(generator_state)
