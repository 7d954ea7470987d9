"""A client's local work, done for real: fp32 training, PTQ or QAT, then the update payload.

:func:`local_work` starts from the global fp32 weights and runs the strategy exactly as a
device would (design.md, "Semantics of one synchronous round", step 4). Alongside the
payload it returns the :class:`~fedhq_sim.work.WorkProfile` of everything it executed, which
the engine prices on the client's device profile. Host time never enters the result.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.functional import cross_entropy

from fedhq_sim.data import Samples
from fedhq_sim.models import traced_build, traced_load
from fedhq_sim.quant import eager
from fedhq_sim.quant.payload import fp32_message, quantized_message, traced_decode, traced_serialize
from fedhq_sim.quant.strategy import Strategy
from fedhq_sim.work import StepCache, WorkProfile, step_markers, traced

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
    input_shape: tuple[int, ...]


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

    def step(index: torch.Tensor) -> float:
        x, y = data.x[index], data.y[index]
        optimizer.zero_grad(set_to_none=True)
        loss = cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    # Steps of one batch shape execute the same operations: count them and add their work
    # once per shape at the end, so that bookkeeping stays off the per-step path.
    steps: Counter[tuple] = Counter()
    step_work: dict[tuple, WorkProfile] = {}
    for _ in range(cfg.local_epochs):
        order, shuffle_work = traced(lambda: torch.randperm(len(data), generator=generator))
        work = work + shuffle_work
        last_losses = []
        for start in range(0, len(data), cfg.batch_size):
            index = order[start : start + cfg.batch_size]
            key = (cfg.model_name, cfg.num_classes, strategy, "train-step", (len(index), *data.x.shape[1:]))
            loss, step_work[key] = STEP_CACHE.run(key, lambda index=index: step(index))
            steps[key] += 1
            last_losses.append(loss)
    for key, count in steps.items():
        work = work + (step_work[key] + step_markers(step_work[key])).times(count)
    return sum(last_losses) / len(last_losses), work


def local_work(global_payload: bytes, data: Samples, strategy: Strategy, cfg: LocalConfig, seed: int) -> LocalResult:
    """Run one client's round of work for ``strategy``, starting from the downloaded model.

    Everything a device would do is executed and traced: reading the global model, training,
    quantizing, and writing the update it will upload.
    """
    global_state, read_work = traced_decode(global_payload)
    model, build_work = traced_build(cfg.model_name, cfg.num_classes, seed=0, input_shape=cfg.input_shape)
    load_work = traced_load(model, global_state)
    work = read_work + build_work + load_work
    if strategy.kind == "fp32":
        loss, train_work = _train(model, data, cfg, strategy, seed)
        payload, write_work = traced_serialize(lambda: fp32_message(model.state_dict()))
        return LocalResult(payload, len(data), loss, work + train_work + write_work)

    if strategy.kind == "qat":
        model, prepare_work = eager.traced_prepare_qat(model, strategy.bits)
        loss, train_work = _train(model, data, cfg, strategy, seed)
        work = work + prepare_work + train_work
        batch_norm = eager.batch_norm_state(model)
    else:
        loss, train_work = _train(model, data, cfg, strategy, seed)
        batch_norm = eager.batch_norm_state(model)
        model, prepare_work = eager.traced_prepare_ptq(model, strategy.bits)
        calibration = data.x[: cfg.calibration_samples]
        batches = list(torch.split(calibration, cfg.batch_size))
        _, calibrate_work = traced(lambda: eager.calibrate(model, batches))
        work = work + train_work + prepare_work + calibrate_work
    quantized, convert_work = eager.traced_convert(model)
    payload, write_work = traced_serialize(lambda: quantized_message(quantized, strategy.bits, batch_norm))
    return LocalResult(payload, len(data), loss, work + convert_work + write_work)
