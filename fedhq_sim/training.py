"""A client's local work, done for real: fp32 training, PTQ or QAT, then the update payload.

:func:`local_work` starts from the global fp32 weights and runs the strategy exactly as a
device would (design.md, "Semantics of one synchronous round", step 4). Alongside the
payload it returns the :class:`~fedhq_sim.work.WorkProfile` of everything it executed, which
the engine prices on the client's device profile. Host time never enters the result.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.functional import cross_entropy

from fedhq_sim.data import Samples
from fedhq_sim.models import Arch, ModelRef, traced_build, traced_load
from fedhq_sim.quant import backend
from fedhq_sim.quant.payload import fp32_message, quantized_message, traced_decode_update, traced_serialize
from fedhq_sim.quant.ranges import LayerRanges, all_set, layer_ranges, start_from
from fedhq_sim.quant.strategy import Strategy
from fedhq_sim.rng import seeded_cpu_generator
from fedhq_sim.server_work import deploy_int8
from fedhq_sim.work import WORK_CACHE, WorkProfile, marker, step_markers, traced, warmup_markers


@dataclass(frozen=True)
class LocalConfig:
    """The local-training settings shared by all clients of a run."""

    model_ref: ModelRef | str
    num_classes: int
    local_epochs: int
    batch_size: int
    learning_rate: float
    calibration_samples: int
    input_shape: tuple[int, ...]
    local_steps: int | None = None
    """Fixed steps per round instead of ``local_epochs`` passes (see the scenario's training)."""
    measure_deployment_gap: bool = False
    """PTQ and QAT clients also deploy their own update on the deployed grid and measure the
    loss that adds on their calibration samples (for policies that observe it:
    :func:`deployment_gap`)."""
    range_bits: int | None = None
    """The deployment's bit width when the clients' updates set its activation ranges
    (``deployment.calibration: clients``): fp32 clients then observe theirs on their
    calibration samples and send them (PTQ and QAT updates always carry theirs); ``None``
    when the server calibrates."""

    @property
    def arch(self) -> Arch:
        """The model as its operations see it (part of every work-cache key)."""
        return (self.model_ref, self.num_classes, tuple(self.input_shape))

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
    deployment_gap: float | None = None
    """PTQ and QAT, when ``measure_deployment_gap``: the loss the deployment adds to the
    client's update, on its calibration samples (:func:`deployment_gap`)."""


def step_plan(n_samples: int, cfg: LocalConfig) -> list[list[int]]:
    """The minibatch sizes of a client's round, pass by pass (each pass reshuffles the data).

    Full batches, then the last partial one; with ``local_steps`` the last pass stops early.
    This one plan drives the real training and the timing-only profile alike.
    """
    if n_samples < 1:
        raise ValueError("a client without samples has no minibatches")
    total, plan, taken = cfg.steps(n_samples), [], 0
    while taken < total:
        sizes = [min(cfg.batch_size, n_samples - start) for start in range(0, n_samples, cfg.batch_size)]
        plan.append(sizes[: total - taken])
        taken += len(plan[-1])
    return plan


def training_work(plan: list[list[int]], step_work: Mapping[int, WorkProfile]) -> WorkProfile:
    """The work of a round's training steps, from each batch size's traced step.

    Every step is its operations plus their bookkeeping; the round's model is freshly built,
    so its first step also carries the warm-up (:func:`~fedhq_sim.work.warmup_markers`).
    """
    work = WorkProfile()
    for size, count in Counter(size for sizes in plan for size in sizes).items():
        work = work + (step_work[size] + step_markers(step_work[size])).times(count)
    return work + warmup_markers(step_work[plan[0][0]])


def head_key(cfg: LocalConfig, strategy: Strategy) -> tuple:
    """Reading the global model (with the deployed ranges when the clients set them), building
    and loading the local one, preparing QAT."""
    return ("local-head", cfg.arch, strategy, cfg.range_bits)


def step_key(cfg: LocalConfig, strategy: Strategy, batch: int) -> tuple:
    return ("train-step", cfg.arch, strategy, batch)


def shuffle_key(n_samples: int) -> tuple:
    return ("shuffle", n_samples)


def shuffled(n_samples: int, generator: torch.Generator) -> tuple[torch.Tensor, WorkProfile]:
    """A pass's order of the samples, and its work."""
    return WORK_CACHE.run(shuffle_key(n_samples), lambda: torch.randperm(n_samples, generator=generator))


def calibration_batches(n_samples: int, cfg: LocalConfig) -> tuple[int, ...]:
    """Sizes of the calibration batches a PTQ client runs (its first ``calibration_samples``)."""
    held = min(n_samples, cfg.calibration_samples)
    return tuple(min(cfg.batch_size, held - start) for start in range(0, held, cfg.batch_size))


def tail_key(cfg: LocalConfig, strategy: Strategy, n_samples: int) -> tuple:
    """Measuring the divergence, quantizing (calibration batches for PTQ) and writing the update."""
    calibrates = strategy.kind == "ptq" or (strategy.kind == "fp32" and cfg.range_bits is not None)
    labels = strategy.kind != "fp32" and cfg.measure_deployment_gap
    batches = calibration_batches(n_samples, cfg) if calibrates or labels else ()
    return ("local-tail", cfg.arch, strategy, batches, labels, cfg.range_bits)


def sgd_step(model: nn.Module, optimizer: torch.optim.Optimizer, data: Samples, index: torch.Tensor) -> float:
    """One plain-SGD step on the samples at ``index``; returns the loss (read back, as a
    client logs it). The device probe measures its training steps with this same function."""
    x, y = data.x[index], data.y[index]
    optimizer.zero_grad(set_to_none=True)
    loss = cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _train(
    model: nn.Module, data: Samples, cfg: LocalConfig, strategy: Strategy, seed: int
) -> tuple[float, WorkProfile]:
    """Plain local SGD (no momentum, as in FedAvg); returns the mean loss over the last pass's
    worth of steps.

    The global generator is seeded with ``seed`` for the round and restored after it: a model
    with dropout (or any random layer) draws the same numbers whichever process runs it and
    whatever ran there before, so results do not depend on where the work ran.
    """
    with seeded_cpu_generator(seed):
        return _seeded_train(model, data, cfg, strategy, seed)


def _seeded_train(
    model: nn.Module, data: Samples, cfg: LocalConfig, strategy: Strategy, seed: int
) -> tuple[float, WorkProfile]:
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    work = WorkProfile()
    # Steps of one batch shape execute the same operations: the first of each shape gets its
    # work from the cache (tracing it if new), the others just run, and the works are added
    # up at the end. A device pays nothing for this bookkeeping, so it stays off the step path.
    step_work: dict[int, WorkProfile] = {}
    losses: list[float] = []
    n = len(data)
    plan = step_plan(n, cfg)
    for sizes in plan:
        order, shuffle_work = shuffled(n, generator)
        work = work + shuffle_work
        for start, size in zip(range(0, n, cfg.batch_size), sizes, strict=False):
            index = order[start : start + size]
            if size in step_work:
                losses.append(sgd_step(model, optimizer, data, index))
                continue
            loss, step_work[size] = WORK_CACHE.run(
                step_key(cfg, strategy, size), lambda index=index: sgd_step(model, optimizer, data, index)
            )
            losses.append(loss)
    work = work + training_work(plan, step_work)
    last_pass = losses[-math.ceil(n / cfg.batch_size) :]
    return sum(last_pass) / len(last_pass), work


@dataclass(frozen=True)
class _Started:
    """A client's model at the start of its training, and what the download said."""

    model: nn.Module
    start: torch.Tensor
    """The global weights, flat: where the training's divergence is measured from."""
    deployed: LayerRanges | None
    """The deployed activation ranges the download carried (NaN before any were deployed)."""


def _head(global_payload: bytes, strategy: Strategy, cfg: LocalConfig) -> tuple[_Started, WorkProfile]:
    """Read the global model into a fresh local one (prepared for QAT if asked, its grids
    starting from the deployed ranges the download carries); snapshot it. The head carries
    the round's fixed cost (``overheads.round_fixed``), once per round as it runs."""
    global_state, ranges, read_work = traced_decode_update(global_payload)
    model, build_work = traced_build(cfg.model_ref, cfg.num_classes, seed=0, input_shape=cfg.input_shape)
    work = marker("round_fixed") + read_work + build_work + traced_load(model, global_state)
    if strategy.kind == "qat":
        model, prepare_work = backend.traced_prepare_qat(model, strategy.bits)
        work = work + prepare_work
        if ranges is not None:
            _, start_work = traced(lambda: start_from(model, ranges))
            work = work + start_work
    start, snapshot_work = traced(lambda: _flat_parameters(model))
    return _Started(model, start, ranges), work + snapshot_work


def _observed_ranges(observer: nn.Module, batches: list[torch.Tensor]) -> LayerRanges:
    """Run the calibration batches through a PTQ-prepared copy; the input ranges it saw."""
    backend.calibrate(observer, batches)
    return layer_ranges(observer)


@dataclass(frozen=True)
class _Finished:
    payload: bytes
    divergence: float
    deployment_gap: float | None


def _tail(started: _Started, data: Samples, strategy: Strategy, cfg: LocalConfig) -> tuple[_Finished, WorkProfile]:
    """Measure how far training moved, quantize by the strategy, write the update, and (when
    asked) measure what the deployment costs it."""
    model = started.model
    divergence, work = traced(lambda: _relative_distance(_flat_parameters(model), started.start))
    if strategy.kind == "fp32":
        ranges = None
        if cfg.range_bits is not None:  # observe the inputs' ranges, as PTQ calibrates, weights left fp32
            observer, prepare_work = backend.traced_prepare_ptq(model, cfg.range_bits)
            batches = list(torch.split(data.x[: cfg.calibration_samples], cfg.batch_size))
            ranges, observe_work = traced(lambda: _observed_ranges(observer, batches))
            work = work + prepare_work + observe_work
        payload, write_work = traced_serialize(lambda: fp32_message(model.state_dict(), ranges))
        return _Finished(payload, divergence, None), work + write_work

    if strategy.kind == "ptq":
        model, prepare_work = backend.traced_prepare_ptq(model, strategy.bits)
        batches = list(torch.split(data.x[: cfg.calibration_samples], cfg.batch_size))
        _, calibrate_work = traced(lambda: backend.calibrate(model, batches))
        work = work + prepare_work + calibrate_work
    quantized, convert_work = backend.traced_convert(model)
    payload, write_work = traced_serialize(lambda: quantized_message(quantized, strategy.bits))
    work = work + convert_work + write_work
    gap = None
    if cfg.measure_deployment_gap:
        held = Samples(data.x[: cfg.calibration_samples], data.y[: cfg.calibration_samples])
        gap, label_work = deployment_gap(payload, started.deployed, held, cfg, strategy.bits)
        work = work + label_work
    return _Finished(payload, divergence, gap), work


def deployment_gap(
    payload: bytes, deployed: LayerRanges | None, held: Samples, cfg: LocalConfig, bits: int
) -> tuple[float, WorkProfile]:
    """The loss the deployment adds to the update in ``payload``, on ``held`` samples: its mean
    loss as the server deploys it (decoded, weights quantized per channel, activations on the
    ``deployed`` grid: the one the download carried, the update's own ranges before any was
    deployed) minus its mean loss run in float, on the same samples.

    This is FedHQ's label (docs/policies.md). The deployed loss alone mixes two things: how
    well the client's update fits its own samples (which training, not the strategy, decides)
    and what quantizing onto the deployed grid costs it. Only the second is what a client's
    choice of PTQ or QAT changes, and only it carries over to the aggregated model the devices
    run: a QAT update, trained on the deployed grid, should lose less to it than a PTQ update
    of the same client. The server could not measure it itself, holding no data.
    """
    state, own, read_work = traced_decode_update(payload)
    grid = deployed if deployed is not None and all_set(deployed) else own
    if grid is None:
        raise ValueError("a quantized update carries its ranges, and this one does not")
    model, build_work = traced_build(cfg.model_ref, cfg.num_classes, seed=0, input_shape=cfg.input_shape)
    work = read_work + build_work + traced_load(model, state)
    model.eval()
    quantized, deploy_work = deploy_int8(model, grid, bits)
    batches = list(zip(torch.split(held.x, cfg.batch_size), torch.split(held.y, cfg.batch_size), strict=True))

    def mean_loss(run: Callable[[torch.Tensor], torch.Tensor]) -> float:
        total = sum(cross_entropy(run(x), y, reduction="sum") for x, y in batches)
        return float(total) / len(held)

    def run_float(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    float_loss, float_work = traced(lambda: mean_loss(run_float))
    deployed_loss, run_work = traced(lambda: mean_loss(lambda x: backend.run_deployed(quantized, x)))
    return deployed_loss - float_loss, work + float_work + deploy_work + run_work


def local_work(global_payload: bytes, data: Samples, strategy: Strategy, cfg: LocalConfig, seed: int) -> LocalResult:
    """Run one client's round of work for ``strategy``, starting from the downloaded model.

    Everything a device would do is executed: reading the global model, training, quantizing,
    and writing the update it will upload. Each piece is traced the first time its key is
    seen in this process and charged its cached profile after that (:class:`WorkCache`).
    """
    started, head_work = WORK_CACHE.once(head_key(cfg, strategy), lambda: _head(global_payload, strategy, cfg))
    loss, train_work = _train(started.model, data, cfg, strategy, seed)
    done, tail_work = WORK_CACHE.once(tail_key(cfg, strategy, len(data)), lambda: _tail(started, data, strategy, cfg))
    work = head_work + train_work + tail_work
    return LocalResult(done.payload, len(data), loss, work, done.divergence, done.deployment_gap)


def _flat_parameters(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _relative_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` (0 when both are zero)."""
    scale = float(torch.linalg.vector_norm(b))
    return float(torch.linalg.vector_norm(a - b)) / scale if scale > 0 else 0.0
