"""In-situ calibration of a measured profile: work inside a client's round, not in a tight loop.

The device probe times each kernel class and each framework overhead in a tight loop,
where caches, branch predictors, the allocator and the kernel libraries' primitive caches
are as warm as they will ever be. A client's round runs its pieces once each, one after
another, in a freshly built model: a convolution follows other layers and meets colder
weights and primitives; reading, building and writing a model run once per round, after
the training has evicted their code and data; the first training steps of a fresh model
create state on first use. Rounds of probe clients (networks that are none of the
simulator's models) are timed here and compared with their tight-loop charge; the
factors and the warm-up they give turn the tight-loop profile into the in-situ one.

The factors scale per-call and per-step costs; of the throughputs only the convolution
group's, by a factor fitted apart from its intercepts on probe clients that range from
intercept-bound to compute-bound convolutions. One factor for both (as before) fitted the
small probe networks, which cannot tell the two apart, and predicted ResNet-18 at 224 px
1.7x slower than it runs on the reference host.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedhq_sim.charge import kernel_terms
from fedhq_sim.models import traced_load
from fedhq_sim.probe_networks import ChainNet, ConvNet, labels_for, step_fn, training_steps
from fedhq_sim.profiles import DeviceProfile, Kernel, Kernels, Overheads
from fedhq_sim.quant import backend
from fedhq_sim.quant.payload import decode_to_fp32, encode_fp32, fp32_message, traced_decode, traced_serialize
from fedhq_sim.timing import InterleavedTimer
from fedhq_sim.work import WorkProfile, marker, traced, untraced

CONV_GROUP = frozenset({"conv", "conv_backward", "norm", "norm_backward"})
"""Kernel classes whose in-network cost the in-situ calibration corrects apart from the rest."""

STEP_OVERHEADS = frozenset({"dispatch", "train_step", "train_op", "qat_op"})
"""Overheads paid on every step: scaled like the kernels outside the convolution group."""

IN_SITU_OVERHEADS = frozenset({"warmup_model", "warmup_op", "round_fixed"})
"""Measured in situ only, not scaled: a fresh model's warm-up, and a round's fixed cost."""

ROUND_OVERHEADS = frozenset(Overheads.model_fields) - STEP_OVERHEADS - IN_SITU_OVERHEADS
"""Overheads paid once per round: reading, building, rewriting and writing a model."""

STEPS = 8
"""Training steps per timed half of a probe round."""


@dataclass(frozen=True)
class ProbeClient:
    """A probe client: its network, its batch shape, and whether it trains with QAT."""

    network: Callable[[], nn.Module]
    batch: tuple[int, ...]
    qat: bool = False


PROBE_CLIENTS = (
    ProbeClient(lambda: ChainNet(2), (64, 8)),
    ProbeClient(lambda: ChainNet(4), (32, 8)),
    ProbeClient(lambda: ChainNet(16), (16, 8)),
    ProbeClient(lambda: ChainNet(3, width=64), (64, 64)),
    ProbeClient(lambda: ChainNet(4), (32, 8), qat=True),
    ProbeClient(lambda: ChainNet(3, width=64), (64, 64), qat=True),
    ProbeClient(lambda: ConvNet(2), (16, 1, 8, 8)),
    ProbeClient(lambda: ConvNet(3, channels=16, widening=True), (32, 1, 8, 8)),
    ProbeClient(lambda: ConvNet(1, channels=32), (64, 1, 8, 8)),
    ProbeClient(lambda: ConvNet(2), (16, 1, 8, 8), qat=True),
    ProbeClient(lambda: ConvNet(2, channels=32), (8, 1, 32, 32)),
)
"""Fully connected and convolutional networks of edge-model widths, under fp32 and QAT
training (QAT's fake quantization adds operations and module calls of its own)."""


@dataclass(frozen=True)
class InSitu:
    """How a client's round runs against the tight-loop profile."""

    conv_factor: float
    """Scales the convolution group's per-call intercepts."""
    conv_compute_factor: float
    """Scales the convolution group's compute and memory time (divides its throughput)."""
    rest_factor: float
    """Scales every other kernel's intercept and the per-step overheads."""
    round_factor: float
    """Scales the once-per-round overheads (:data:`ROUND_OVERHEADS`)."""
    round_fixed: float
    """Seconds a round's reading, building and writing cost once, beyond their scaled parts."""
    warmup_model: float
    """Seconds a fresh model's first steps cost beyond steady ones, once per model."""
    warmup_op: float
    """... and in addition per operation of a step."""


@dataclass(frozen=True)
class _Parts:
    """Seconds of some work on the tight-loop profile, by how the calibration scales them."""

    conv: float
    """Per-call intercepts of the convolution group."""
    conv_compute: float
    """The convolution group's compute and memory terms."""
    step: float
    """The other kernels' intercepts, views and per-step overheads."""
    round: float
    """Once-per-round overheads."""
    fixed: float
    """The other kernels' compute and memory terms (FLOPs over throughput, bytes over
    bandwidth): a large kernel runs in a network as fast as in a tight loop, so these are
    not scaled."""


def _parts(work: WorkProfile, device: DeviceProfile) -> _Parts:
    conv = conv_compute = step = round_ = fixed = 0.0
    for op, count in work.counts.items():
        if op.kind == "view":
            step += count * device.overheads.dispatch
        elif op.kind == "marker":
            name = op.op.removeprefix("sim.")
            seconds = count * getattr(device.overheads, name)
            if name in ROUND_OVERHEADS:
                round_ += seconds
            else:
                step += seconds
        else:
            intercept, compute = kernel_terms(op, device)
            if op.kind in CONV_GROUP:
                conv += count * intercept
                conv_compute += count * compute
            else:
                step += count * intercept
                fixed += count * compute
    return _Parts(conv, conv_compute, step, round_, fixed)


@dataclass(frozen=True)
class _Traced:
    """One probe client's work: its steady training steps and the rest of its round."""

    steady: WorkProfile
    round: WorkProfile
    step_ops: int


def _trace(client: ProbeClient, x: torch.Tensor, payload: bytes) -> _Traced:
    """The work of a probe client's round, traced once."""
    state, read = traced_decode(payload)
    model, build = traced(client.network)
    build = build + marker("build_module", sum(1 for _ in model.modules()))
    load = traced_load(model, state)
    if client.qat:
        model, prepare = backend.traced_prepare_qat(model)
        load = load + prepare
    steps, one_step = training_steps(model, x, STEPS)
    _, write = traced_serialize(lambda: fp32_message(model.state_dict()))
    ops = one_step.num_ops - one_step.count("view")
    return _Traced(steps, read + build + load + write, ops)


def _timed_round(client: ProbeClient, x: torch.Tensor, payload: bytes) -> tuple[float, float, float]:
    """Seconds of a probe client's round: reading, building (and preparing) and writing the
    model; the fresh model's first :data:`STEPS` training steps; and as many more (the
    steady state)."""
    labels = labels_for(x)
    start = time.perf_counter()
    model = client.network()
    model.load_state_dict(decode_to_fp32(payload))
    if client.qat:
        model = backend.prepare_qat(model)
    built = time.perf_counter()
    step = step_fn(model.train(), x, labels)
    for _ in range(STEPS):
        step()
    warm = time.perf_counter()
    for _ in range(STEPS):
        step()
    trained = time.perf_counter()
    encode_fp32(model.state_dict())
    return built - start + time.perf_counter() - trained, warm - built, trained - warm


def _clamped(factor: float) -> float:
    """A factor kept within [0.5, 4]: beyond that a probe round went wrong (a stall of the
    host, a timer glitch), not the host's in-situ behaviour; 4, not 3, because convolution
    intercepts alone (their compute has a factor of its own) measured up to about 3 here."""
    return min(max(factor, 0.5), 4.0)


def _conv_factors(clients: list[tuple[float, float, _Parts]]) -> tuple[float, float]:
    """The convolution group's intercept and compute factors, from ``(measured, left, parts)``
    of each convolutional client, ``left`` being what its time leaves after the rest.

    Least squares on relative error, over clients whose convolutions range from
    intercept-bound (8x8 maps) to compute-bound (32x32 maps), tells the two apart. The
    compute factor stays within [1, 2] (a convolution streams no faster in a network than in
    a loop); the intercept factor is then the median of what each client leaves for it.
    """
    measured = np.array([m for m, _, _ in clients])
    design = np.array([[p.conv, p.conv_compute] for _, _, p in clients]) / measured[:, None]
    target = np.array([left for _, left, _ in clients]) / measured
    (_, compute), *_ = np.linalg.lstsq(design, target, rcond=None)
    compute = min(max(float(compute), 1.0), 2.0)
    intercept = statistics.median((left - compute * p.conv_compute) / p.conv for _, left, p in clients)
    return intercept, compute


def theil_sen(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """``(intercept, slope)`` of the Theil-Sen line through the points, both kept >= 0.

    The median of pairwise slopes, then of intercepts: robust to a minority of wild points,
    which the probe's differences of noisy timings produce (a negative warm-up of a client
    whose steps take 14 ms) and least squares would follow.
    """
    points = list(zip(xs, ys, strict=True))
    slopes = [(y2 - y1) / (x2 - x1) for (x1, y1), (x2, y2) in itertools.combinations(points, 2) if x1 != x2]
    slope = max(statistics.median(slopes), 0.0)
    return max(statistics.median(y - slope * x for x, y in points), 0.0), slope


def warmup_line(ops: Sequence[int], excess: Sequence[float]) -> tuple[float, float]:
    """``(per model, per operation)`` of a fresh model's warm-up: the :func:`theil_sen` line
    through each probe client's excess of its fresh steps over its steady ones against its
    operations per step.

    The warm-up is mostly a cost per model (about 0.5 ms for the smallest chain on the
    reference host, against 1.1-1.5 ms for chains of four to eight times the operations),
    so a cost per operation alone, as charged before, gave a two-layer model a third of its
    warm-up.
    """
    per_model, per_op = theil_sen(ops, excess)
    return _measurable(per_model), _measurable(per_op)


def round_line(charged: Sequence[float], left: Sequence[float]) -> tuple[float, float]:
    """``(per round, factor)`` of the once-per-round overheads: the :func:`theil_sen` line
    through each probe client's round time left after its kernels against its overhead
    markers' tight-loop charge.

    Reading, building and writing a model cost a fixed amount per round beyond their parts
    (their code paths run cold, after training or after other work: a small model's first
    serialization after training takes twice its warm repeat, 0.55 against 0.26 ms) plus
    their per-tensor costs at a factor. One factor for both, as before, charged a two-layer
    model's read and write 20-50 % too little and a ResNet-8's 10-15 % too much.
    """
    per_round, factor = theil_sen(charged, left)
    return _measurable(per_round), factor


def _measurable(seconds: float) -> float:
    """A cost the line puts at zero or below is too small to measure: kept at 1 ns, since a
    profile holds no zero cost (a probe whose line went through the origin was refused)."""
    return max(seconds, 1e-9)


def in_situ(timer: InterleavedTimer) -> Callable[[DeviceProfile], InSitu]:
    """Register the probe clients' rounds with ``timer``; the returned function gives the
    factors and warm-up of a tight-loop profile of this host once ``timer`` has run.

    Each probe client's timed round follows an untimed round of the same client, as a
    client's round follows its previous round and not another model's work (whose cache
    footprint would be charged to this one); the timer takes the clients' rounds in turns
    with the tight-loop measurements, so that both see the host over the same period. The
    steady half of the training gives the factors of the intercepts: networks without
    convolutions the factor of the rest (what the measured time leaves after the compute
    and memory terms, over what the intercepts predict), convolutional ones that of the
    convolution group from the time the rest leaves. Reading, building and writing give the
    factor and the fixed cost of the once-per-round overheads from what their operations leave
    (:func:`round_line`), and the fresh half's excess over the steady half is the warm-up
    (:func:`warmup_line`).
    """
    clients = [(c, torch.randn(c.batch), encode_fp32(c.network().state_dict())) for c in PROBE_CLIENTS]
    traced_work = [_trace(client, x, payload) for client, x, payload in clients]

    def turn(client: ProbeClient, x: torch.Tensor, payload: bytes) -> tuple[float, float, float]:
        with untraced():
            _timed_round(client, x, payload)  # the previous round of the same client
            return _timed_round(client, x, payload)

    timings = [timer.job(lambda c=c, x=x, p=p: turn(c, x, p)) for c, x, p in clients]

    def fitted(device: DeviceProfile) -> InSitu:
        rounds, fresh, steady = ([t.part(i) for t in timings] for i in range(3))
        parts = [(_parts(w.steady, device), _parts(w.round, device)) for w in traced_work]
        pairs = [(m, p) for m, (p, _) in zip(steady, parts, strict=True)]
        rest = _clamped(statistics.median((m - p.fixed) / p.step for m, p in pairs if p.conv == 0))
        conv, conv_compute = _conv_factors([(m, m - rest * p.step - p.fixed, p) for m, p in pairs if p.conv > 0])
        conv = _clamped(conv)
        left = [
            m - rest * r.step - conv * r.conv - conv_compute * r.conv_compute - r.fixed
            for m, (_, r) in zip(rounds, parts, strict=True)
        ]
        round_fixed, round_factor = round_line([r.round for _, r in parts], left)
        excess = [f - s for f, s in zip(fresh, steady, strict=True)]
        per_model, per_op = warmup_line([w.step_ops for w in traced_work], excess)
        return InSitu(conv, conv_compute, rest, _clamped(round_factor), round_fixed, per_model, per_op)

    return fitted


def apply_in_situ(kernels: Kernels, overheads: Overheads, factors: InSitu) -> tuple[Kernels, Overheads]:
    """The tight-loop kernels and overheads scaled to a client's round, with its warm-up."""
    scaled_kernels = {}
    for name, kernel in kernels:
        if kernel is not None:
            if name in CONV_GROUP:
                overhead = kernel.overhead * factors.conv_factor
                throughput = kernel.throughput / factors.conv_compute_factor
            else:
                overhead, throughput = kernel.overhead * factors.rest_factor, kernel.throughput
            scaled_kernels[name] = Kernel.model_construct(overhead=overhead, throughput=throughput)
    scaled_overheads = {
        name: value * (factors.round_factor if name in ROUND_OVERHEADS else factors.rest_factor)
        for name, value in overheads
        if name in ROUND_OVERHEADS | STEP_OVERHEADS
    }
    in_situ_overheads = {
        "warmup_model": factors.warmup_model,
        "warmup_op": factors.warmup_op,
        "round_fixed": factors.round_fixed,
    }
    scaled_overheads |= in_situ_overheads  # measured in situ already
    return Kernels.model_construct(**scaled_kernels), Overheads.model_construct(**scaled_overheads)
