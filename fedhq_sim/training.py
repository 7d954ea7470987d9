"""A client's local work, done for real: fp32 training, PTQ or QAT, then the update payload.

:func:`local_work` starts from the global fp32 weights and runs the strategy exactly as a
device would (design.md, "Semantics of one synchronous round", step 4). Alongside the
payload it returns the :class:`~fedhq_sim.work.WorkProfile` of everything it executed, which
the engine prices on the client's device profile. Host time never enters the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.functional import cross_entropy

from fedhq_sim.data import Samples
from fedhq_sim.models import build_model
from fedhq_sim.quant import eager
from fedhq_sim.quant.payload import encode_fp32, encode_quantized
from fedhq_sim.quant.strategy import Strategy
from fedhq_sim.work import StepCache, WorkProfile, traced

STEP_CACHE = StepCache()


@dataclass(frozen=True)
class LocalConfig:
    """The local-training settings shared by all clients of a run."""

    model_name: str
    num_classes: int
    local_epochs: int
    batch_size: int
    learning_rate: float
    calibration_samples: int


@dataclass(frozen=True)
class LocalResult:
    """What a client hands back: the serialized update and what producing it cost."""

    payload: bytes
    num_samples: int
    train_loss: float
    work: WorkProfile


def _train(
    model: nn.Module, data: Samples, cfg: LocalConfig, strategy: Strategy, seed: int
) -> tuple[float, WorkProfile]:
    """Plain local SGD (no momentum, as in FedAvg); returns the mean loss of the last epoch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    work = WorkProfile()
    last_losses: list[float] = []

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    for _ in range(cfg.local_epochs):
        order = torch.randperm(len(data), generator=generator)
        last_losses = []
        for start in range(0, len(data), cfg.batch_size):
            index = order[start : start + cfg.batch_size]
            x, y = data.x[index], data.y[index]
            key = (cfg.model_name, cfg.num_classes, strategy, "train-step", tuple(x.shape))
            loss, step_work = STEP_CACHE.run(key, lambda x=x, y=y: step(x, y))
            work = work + step_work
            last_losses.append(loss)
    return sum(last_losses) / len(last_losses), work


def local_work(
    global_state: dict[str, torch.Tensor], data: Samples, strategy: Strategy, cfg: LocalConfig, seed: int
) -> LocalResult:
    """Run one client's round of work for ``strategy``, starting from ``global_state``."""
    model = build_model(cfg.model_name, cfg.num_classes, seed=0)
    model.load_state_dict(global_state)
    if strategy.kind == "fp32":
        loss, work = _train(model, data, cfg, strategy, seed)
        return LocalResult(encode_fp32(model.state_dict()), len(data), loss, work)

    if strategy.kind == "qat":
        model, prepare_work = traced(lambda: eager.prepare_qat(model))
        loss, train_work = _train(model, data, cfg, strategy, seed)
        work = prepare_work + train_work
    else:
        loss, work = _train(model, data, cfg, strategy, seed)
        model, prepare_work = traced(lambda: eager.prepare_ptq(model))
        calibration = data.x[: cfg.calibration_samples]
        batches = list(torch.split(calibration, cfg.batch_size))
        _, calibrate_work = traced(lambda: eager.calibrate(model, batches))
        work = work + prepare_work + calibrate_work
    quantized, convert_work = traced(lambda: eager.convert(model))
    return LocalResult(encode_quantized(quantized, strategy.bits), len(data), loss, work + convert_work)
