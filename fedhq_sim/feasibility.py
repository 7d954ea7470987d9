"""Can a client take part at all? Memory and link checks, before any round runs.

A gateway whose memory cannot hold a training step, or whose link cannot carry the model
and its update within the round deadline even with the link to itself, would only ever be
dropped; a planner needs to see that, with the reason, instead of a silent drop every
round. The checks are per strategy, since QAT needs more memory than fp32 training and a
quantized update is smaller than an fp32 one.

Memory need = the peak bytes a training step allocates (gradients, activations, optimizer
temporaries), traced for real at the scenario's batch shape, plus the model copies a client
holds meanwhile. Link need = route latency + bytes over the narrowest link, for the fp32
download and the strategy's upload, with no other traffic. Time need = that plus the
client's training steps charged on its device (a floor: calibration and conversion come on
top), against the round deadline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import torch
from torch.nn.functional import cross_entropy

from fedhq_sim.models import ModelRef, build_model
from fedhq_sim.network import DirectedLink
from fedhq_sim.quant import backend
from fedhq_sim.quant.payload import encode_fp32, encode_quantized
from fedhq_sim.quant.ranges import layer_ranges
from fedhq_sim.quant.strategy import Strategy
from fedhq_sim.scenario import ClientSpec
from fedhq_sim.work import WorkProfile, step_markers, traced


@dataclass(frozen=True)
class Feasibility:
    """Whether one client can run one strategy, and why not when it cannot."""

    client_id: int
    client: str
    device: str
    link: str
    strategy: str
    able: bool
    reason: str
    memory_needed_bytes: int
    memory_available_bytes: int
    transfer_s: float
    compute_s: float


def _state_bytes(model: torch.nn.Module) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class StepEstimate:
    """One training step of a strategy, traced for real, and what the client holds meanwhile."""

    work: WorkProfile
    memory_bytes: int


@cache
def training_step(
    model_ref: ModelRef | str, num_classes: int, strategy: Strategy, batch_shape: tuple[int, ...]
) -> StepEstimate:
    """Trace one training step of ``strategy`` at ``batch_shape`` and size the client's memory.

    Memory: the step's peak allocations (gradients, activations, temporaries) plus what stays
    resident through it: the decoded global model, the model being trained and, for QAT, the
    fp32 model it was prepared from, and the update about to be written (one more copy).
    """
    model = build_model(model_ref, num_classes, seed=0, input_shape=batch_shape[1:])
    resident = 3 * _state_bytes(model)
    if strategy.kind == "qat":
        model = backend.prepare_qat(model, strategy.bits)
        resident += _state_bytes(model)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    x = torch.zeros(batch_shape)
    y = torch.zeros(batch_shape[0], dtype=torch.long)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        cross_entropy(model(x), y).backward()
        optimizer.step()

    _, work = traced(step)
    return StepEstimate(work + step_markers(work), resident + work.peak_bytes)


@cache
def payload_bytes(
    model_ref: ModelRef | str,
    num_classes: int,
    strategy: Strategy,
    input_shape: tuple[int, ...],
    range_bits: int | None = None,
) -> int:
    """Serialized size of a model (fp32) or of its quantized update, from a real encoding
    (an fp32 update, or the global model as clients download it, with its layers' input
    ranges when ``range_bits`` is given: both carry them when the clients set the deployment's
    ranges)."""
    model = build_model(model_ref, num_classes, seed=0, input_shape=input_shape)
    if strategy.kind == "fp32" and range_bits is None:
        return len(encode_fp32(model.state_dict()))
    prepared = backend.prepare_ptq(model, strategy.bits if strategy.kind != "fp32" else range_bits)
    backend.calibrate(prepared, [torch.rand((4, *input_shape), generator=torch.Generator().manual_seed(0))])
    if strategy.kind == "fp32":
        return len(encode_fp32(model.state_dict(), layer_ranges(prepared)))
    return len(encode_quantized(backend.convert(prepared), strategy.bits))


def transfer_floor_s(
    route: Sequence[tuple[str, str]], links: dict[tuple[str, str], DirectedLink], nbytes: int
) -> float:
    """Fastest possible transfer: the route's latency plus the bytes over its narrowest link."""
    hops = [links[hop] for hop in route]
    return sum(h.latency_s for h in hops) + 8.0 * nbytes / min(h.capacity_bps for h in hops)


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


def _duration(seconds: float) -> str:
    return f"{seconds:.3g} s" if seconds < 120 else f"{seconds / 3600:.3g} h"


def check_client(
    client: ClientSpec,
    strategy: Strategy,
    *,
    memory_bytes: int,
    download_s: float,
    compute_s: float,
    upload_s: float,
    upload_nbytes: int,
    deadline_s: float,
) -> Feasibility:
    """One client and strategy against its device's memory, its route and the deadline.

    ``compute_s`` is a floor: the client's training steps alone, charged on its device.
    """
    available = client.device.memory_available
    reasons = []
    if memory_bytes > available:
        reasons.append(
            f"memory: {strategy.label} training needs {_mib(memory_bytes)}, device {client.device.name} has "
            f"{_mib(available)} available"
        )
    transfer_s = download_s + upload_s
    if transfer_s > deadline_s:
        reasons.append(
            f"link: the model download and the {upload_nbytes} B {strategy.label} update need at least "
            f"{_duration(transfer_s)} over {client.link.name} (round deadline {_duration(deadline_s)})"
        )
    elif transfer_s + compute_s > deadline_s:
        reasons.append(
            f"time: transfers ({_duration(transfer_s)}) and {strategy.label} training steps on "
            f"{client.device.name} ({_duration(compute_s)}) need at least {_duration(transfer_s + compute_s)} "
            f"(round deadline {_duration(deadline_s)})"
        )
    return Feasibility(
        client.client_id,
        client.name,
        client.device.name,
        client.link.name,
        strategy.label,
        not reasons,
        "; ".join(reasons),
        memory_bytes,
        int(available),
        transfer_s,
        compute_s,
    )
