"""A client's local work, done for real: fp32 training, PTQ or QAT, then the update payload.

:func:`local_work` starts from the global fp32 weights and runs the strategy exactly as a
device would (design.md, "Semantics of one synchronous round", step 4). Alongside the
payload it returns the :class:`~fedhq_sim.work.WorkProfile` of everything it executed, which
the engine prices on the client's device profile. Host time never enters the result.
"""

from __future__ import annotations

import math
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
    local_steps: int | None = None
    """Fixed steps per round instead of ``local_epochs`` passes (see the scenario's training)."""
    measure_quantization_error: bool = False
    """PTQ clients also run their int8 model on the calibration samples to measure the
    conversion error (for policies that observe it)."""

    def steps(self, n_samples: int) -> int:
        """Minibatch steps a client holding ``n_samples`` takes in a round."""
        if self.local_steps is not None:
            return self.local_steps
        return self.local_epochs * math.ceil(n_samples / self.batch_size)


@dataclass(frozen=True)
class LocalResult:
    """What a client hands back: the serialized update and what producing it cost."""

    payload: bytes
    num_samples: int
    train_loss: float
    work: WorkProfile
    divergence: float
    """Relative L2 distance of the trained weights from the global weights the round began with."""
    quantization_error: float | None = None
    """PTQ only, when ``measure_quantization_error``: relative L2 distance of the int8 model's
    outputs from the float model's on the calibration samples, i.e. how much conversion
    distorts what the client learned."""


def _train(
    model: nn.Module, data: Samples, cfg: LocalConfig, strategy: Strategy, seed: int
) -> tuple[float, WorkProfile]:
    """Plain local SGD (no momentum, as in FedAvg); returns the mean loss over the last pass's
    worth of steps."""
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    work = WorkProfile()

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
    per_pass = math.ceil(len(data) / cfg.batch_size)
    losses: list[float] = []
    while len(losses) < cfg.steps(len(data)):  # passes over the data, each reshuffled
        order, shuffle_work = traced(lambda: torch.randperm(len(data), generator=generator))
        work = work + shuffle_work
        for start in range(0, len(data), cfg.batch_size):
            if len(losses) == cfg.steps(len(data)):
                break
            index = order[start : start + cfg.batch_size]
            key = (cfg.model_name, cfg.num_classes, strategy, "train-step", (len(index), *data.x.shape[1:]))
            loss, step_work[key] = STEP_CACHE.run(key, lambda index=index: step(index))
            steps[key] += 1
            losses.append(loss)
    for key, count in steps.items():
        work = work + (step_work[key] + step_markers(step_work[key])).times(count)
    last_pass = losses[-per_pass:]
    return sum(last_pass) / len(last_pass), work


def local_work(global_payload: bytes, data: Samples, strategy: Strategy, cfg: LocalConfig, seed: int) -> LocalResult:
    """Run one client's round of work for ``strategy``, starting from the downloaded model.

    Everything a device would do is executed and traced: reading the global model, training,
    quantizing, and writing the update it will upload.
    """
    global_state, read_work = traced_decode(global_payload)
    model, build_work = traced_build(cfg.model_name, cfg.num_classes, seed=0, input_shape=cfg.input_shape)
    load_work = traced_load(model, global_state)
    work = read_work + build_work + load_work
    if strategy.kind == "qat":
        model, prepare_work = eager.traced_prepare_qat(model, strategy.bits)
        work = work + prepare_work
    start, snapshot_work = traced(lambda: _flat_parameters(model))
    loss, train_work = _train(model, data, cfg, strategy, seed)
    divergence, divergence_work = traced(lambda: _relative_distance(_flat_parameters(model), start))
    work = work + snapshot_work + train_work + divergence_work
    if strategy.kind == "fp32":
        payload, write_work = traced_serialize(lambda: fp32_message(model.state_dict()))
        return LocalResult(payload, len(data), loss, work + write_work, divergence)

    batch_norm = eager.batch_norm_state(model)
    quantization_error = None
    if strategy.kind == "ptq":
        model, prepare_work = eager.traced_prepare_ptq(model, strategy.bits)
        batches = list(torch.split(data.x[: cfg.calibration_samples], cfg.batch_size))
        float_outputs, calibrate_work = traced(lambda: eager.calibrate(model, batches))
        work = work + prepare_work + calibrate_work
    quantized, convert_work = eager.traced_convert(model)
    work = work + convert_work
    if strategy.kind == "ptq" and cfg.measure_quantization_error:
        quantization_error, check_work = traced(
            lambda: _relative_distance(torch.cat([eager.run_int8(quantized, x) for x in batches]), float_outputs)
        )
        work = work + check_work
    payload, write_work = traced_serialize(lambda: quantized_message(quantized, strategy.bits, batch_norm))
    return LocalResult(payload, len(data), loss, work + write_work, divergence, quantization_error)


def _flat_parameters(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _relative_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` (0 when both are zero)."""
    scale = float(torch.linalg.vector_norm(b))
    return float(torch.linalg.vector_norm(a - b)) / scale if scale > 0 else 0.0
