"""The synthetic networks the device probe measures with, and their training steps.

None of them is a model the simulator ships: the fidelity check (``bench/fidelity.py``) tests
the profile they give on those models, which the profile has never seen.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fedhq_sim.data import Samples
from fedhq_sim.training import sgd_step
from fedhq_sim.work import WorkProfile, step_markers, traced


class ChainNet(nn.Module):
    """A stack of small Linear+ReLU layers: training steps that are all bookkeeping."""

    def __init__(self, depth: int, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ConvNet(nn.Module):
    """Conv+BN+ReLU blocks, a pool and a linear head: the layer types of small edge CNNs.

    With ``widening`` each block doubles the channels and halves the feature map (strided
    convolution), as CNN stages do.
    """

    def __init__(self, depth: int, channels: int = 8, *, widening: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, channels, 3, padding=1)]
        width = channels
        for _ in range(depth):
            out, stride = (2 * width, 2) if widening else (width, 1)
            layers += [nn.Conv2d(width, out, 3, stride=stride, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            width = out
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One SGD training step of ``model`` on the batch ``(x, y)``, as a closure.

    It is a client's own step (:func:`~fedhq_sim.training.sgd_step`): the batch is gathered
    from the samples by an index and the loss is read back, whose costs are part of every
    step a client takes.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    data, index = Samples(x, y), torch.randperm(len(x))
    return lambda: sgd_step(model, optimizer, data, index)


def labels_for(x: torch.Tensor) -> torch.Tensor:
    """Class labels for a probe batch (the probe networks have 8 outputs)."""
    return torch.randint(0, 8, (len(x),))


def training_steps(model: nn.Module, x: torch.Tensor, steps: int) -> tuple[WorkProfile, WorkProfile]:
    """``steps`` fp32 training steps of a probe network on ``x``: their work, and one step's."""
    step = step_fn(model.train(), x, labels_for(x))
    work = WorkProfile()
    for _ in range(steps):
        _, step_work = traced(step)
        work = work + step_work + step_markers(step_work)
    return work, step_work
