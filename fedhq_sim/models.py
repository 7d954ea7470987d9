"""Model architectures that work under fp32, PTQ and QAT in eager mode.

Each model wraps its body in ``QuantStub``/``DeQuantStub`` and lists the layer groups that
eager quantization fuses (conv+relu, linear+relu), so the same class serves all three
strategies. Models are built from a name in the scenario through :data:`MODELS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.ao.quantization import DeQuantStub, QuantStub

from fedhq_sim.work import WorkProfile, marker, traced

Arch = tuple[str, int, tuple[int, ...]]
"""A model as its operations see it: name, number of classes, input shape (a cache-key part)."""

IMAGE_SHAPE = (1, 8, 8)
"""The input shape the convolutional models are sized for (the digits)."""


def _require_images(model: str, input_shape: tuple[int, ...]) -> None:
    if tuple(input_shape) != IMAGE_SHAPE:
        raise ValueError(f"{model} takes {IMAGE_SHAPE} images, got inputs of shape {tuple(input_shape)}")


class SmallCNN(nn.Module):
    """Two conv+ReLU+pool blocks and a linear head, sized for 8x8 single-channel images."""

    fuse_groups = (("conv1", "relu1"), ("conv2", "relu2"))

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, ...] = IMAGE_SHAPE) -> None:
        _require_images("small_cnn", input_shape)
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
    """A two-hidden-layer perceptron over the flattened input: tabular sensor readings."""

    fuse_groups = (("fc1", "relu1"), ("fc2", "relu2"))

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, ...] = IMAGE_SHAPE, hidden: int = 64) -> None:
        super().__init__()
        in_features = math.prod(input_shape)
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


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers and a shortcut (1x1 conv+BN where the shape changes).

    The residual add goes through ``FloatFunctional`` so that eager quantization can replace
    it by an int8 add-and-ReLU.
    """

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
        self.add_relu = torch.ao.nn.quantized.FloatFunctional()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.add_relu.add_relu(out, self.shortcut(x))

    def fuse_groups(self, prefix: str) -> list[tuple[str, ...]]:
        groups = [(f"{prefix}.conv1", f"{prefix}.bn1", f"{prefix}.relu1"), (f"{prefix}.conv2", f"{prefix}.bn2")]
        if len(self.shortcut):
            groups.append((f"{prefix}.shortcut.0", f"{prefix}.shortcut.1"))
        return groups


class ResNet8(nn.Module):
    """A ResNet-8 (stem conv, three basic blocks of 16/32/64 channels, linear head).

    The CIFAR-style ResNet of He et al. (2016) cut to one block per stage, as in the tinyML
    and FL literature (e.g. MLPerf Tiny's ResNet-8); here sized for 8x8 single-channel inputs.
    """

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, ...] = IMAGE_SHAPE) -> None:
        _require_images("resnet8", input_shape)
        super().__init__()
        self.quant = QuantStub()
        self.conv = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.block1 = BasicBlock(16, 16, stride=1)
        self.block2 = BasicBlock(16, 32, stride=2)
        self.block3 = BasicBlock(32, 64, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        self.dequant = DeQuantStub()
        self.fuse_groups = (
            ("conv", "bn", "relu"),
            *self.block1.fuse_groups("block1"),
            *self.block2.fuse_groups("block2"),
            *self.block3.fuse_groups("block3"),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.conv(self.quant(x))))
        x = self.block3(self.block2(self.block1(x)))
        return self.dequant(self.fc(torch.flatten(self.pool(x), 1)))


MODELS: dict[str, Callable[[int, tuple[int, ...]], nn.Module]] = {
    "small_cnn": SmallCNN,
    "resnet8": ResNet8,
    "mlp": MLP,
}
IMAGE_MODELS = frozenset({"small_cnn", "resnet8"})


def traced_build(
    name: str, num_classes: int, seed: int, input_shape: tuple[int, ...] = IMAGE_SHAPE
) -> tuple[nn.Module, WorkProfile]:
    """:func:`build_model` with its work: initialisation ops plus a marker per module built."""
    model, work = traced(lambda: build_model(name, num_classes, seed, input_shape))
    return model, work + marker("build_module", sum(1 for _ in model.modules()))


def traced_load(model: nn.Module, state: dict[str, torch.Tensor]) -> WorkProfile:
    """``model.load_state_dict(state)`` with its work: copy ops plus a marker per tensor loaded."""
    _, work = traced(lambda: model.load_state_dict(state))
    return work + marker("load_tensor", len(state))


def build_model(name: str, num_classes: int, seed: int, input_shape: tuple[int, ...] = IMAGE_SHAPE) -> nn.Module:
    """A freshly initialised model; the same ``seed`` gives the same weights on any host."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return MODELS[name](num_classes, tuple(input_shape))
    finally:
        torch.random.set_rng_state(generator_state)
