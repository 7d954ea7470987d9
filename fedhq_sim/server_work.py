"""The server's real work in a round: decode, aggregate, deploy and evaluate.

The updates are decoded (and dequantized) and averaged by FedAvg; the new global fp32
model is then quantized for the devices (:mod:`fedhq_sim.deployment`): its activation
grids set from the sample-weighted mean of the ranges the updates carry, or by PTQ on the
server's own calibration samples. That model is what the devices would run, and its test
accuracy is the **deployed accuracy**; the fp32 accuracy is reported beside it. The work is
traced so the engine can charge it on the server's profile.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fedhq_sim.aggregate import fedavg, mix
from fedhq_sim.data import Samples
from fedhq_sim.models import Arch, ModelRef, traced_build, traced_load
from fedhq_sim.quant import backend
from fedhq_sim.quant.payload import (
    decode_to_fp32,
    fp32_message,
    traced_decode,
    traced_decode_update,
    traced_serialize,
)
from fedhq_sim.quant.ranges import LayerRanges, mean_ranges, set_ranges
from fedhq_sim.work import WORK_CACHE, WorkProfile, traced

EVAL_BATCH = 256


@dataclass(frozen=True)
class ServerResult:
    """The new global model, its two accuracies and what computing them cost."""

    state: dict[str, torch.Tensor]
    fp32_accuracy: float
    deployed_accuracy: float
    work: WorkProfile


def accuracy(model: nn.Module, samples: Samples, *, int8: bool, price_only: bool = False) -> tuple[float, WorkProfile]:
    """Share of ``samples`` the model labels correctly (deployed models as int8 kernels), and
    the work it took.

    A batch's work depends on its shape alone, so each shape is traced once and its profile
    charged for every batch of that shape; with ``price_only`` (timing-only mode, which
    needs the work and not the accuracy) the other batches are not even run, and the share
    is NaN. A large model's test set would otherwise cost a timing-only run tens of seconds.
    """

    def count(x: torch.Tensor, y: torch.Tensor) -> int:
        with torch.no_grad():
            logits = backend.run_deployed(model, x) if int8 else model(x)
            return int((logits.argmax(dim=1) == y).sum())

    model.eval()
    batches, work = traced(lambda: (torch.split(samples.x, EVAL_BATCH), torch.split(samples.y, EVAL_BATCH)))
    correct, traced_shapes = 0, {}
    for x, y in zip(*batches, strict=True):
        shape = tuple(x.shape)
        if shape not in traced_shapes:
            right, traced_shapes[shape] = traced(lambda x=x, y=y: count(x, y))
            correct += right
        elif not price_only:
            correct += count(x, y)
        work = work + traced_shapes[shape]
    return (float("nan") if price_only else correct / len(samples)), work


DeploySource = Samples | LayerRanges | None
"""Where the deployed activation grids come from: the server's calibration samples, the
aggregated ranges of the clients' updates, or nothing yet (no update has arrived)."""


def deploy_int8(model: nn.Module, source: Samples | LayerRanges, bits: int = 8) -> tuple[nn.Module, WorkProfile]:
    """The model the devices run: ``model`` quantized at ``bits``, its activation grids on the
    given ranges, or calibrated by PTQ on the server's samples."""
    prepared, prepare_work = backend.traced_prepare_ptq(model, bits)
    if isinstance(source, Samples):
        _, set_work = traced(lambda: backend.calibrate(prepared, list(torch.split(source.x, EVAL_BATCH))))
    else:
        _, set_work = traced(lambda: set_ranges(prepared, source))
    deployed, convert_work = backend.traced_convert(prepared)
    return deployed, prepare_work + set_work + convert_work


def _source_key(source: DeploySource) -> tuple:
    if isinstance(source, Samples):
        return ("server", tuple(source.x.shape))
    return ("clients",) if source is not None else ("no ranges",)


def evaluate_key(model_ref: ModelRef | str, num_classes: int, source: DeploySource, test: Samples, bits: int) -> tuple:
    return ("evaluate", model_ref, num_classes, _source_key(source), tuple(test.x.shape), bits)


def evaluate_global(
    state: dict[str, torch.Tensor],
    model_ref: ModelRef | str,
    num_classes: int,
    source: DeploySource,
    test: Samples,
    bits: int = 8,
    *,
    price_only: bool = False,
) -> tuple[float, float, WorkProfile]:
    """fp32 and deployed (int8) test accuracy of a global state, with the work it took
    (``price_only``: the work alone, see :func:`accuracy`). Without a ``source`` of
    activation ranges nothing is deployed, and the deployed accuracy is NaN."""

    def run() -> tuple[tuple[float, float], WorkProfile]:
        model, build_work = traced_build(model_ref, num_classes, seed=0, input_shape=tuple(test.x.shape[1:]))
        load_work = traced_load(model, state)
        fp32_acc, fp32_work = accuracy(model, test, int8=False, price_only=price_only)
        work = build_work + load_work + fp32_work
        if source is None:
            return (fp32_acc, math.nan), work
        deployed, deploy_work = deploy_int8(model, source, bits)
        int8_acc, int8_work = accuracy(deployed, test, int8=True, price_only=price_only)
        return (fp32_acc, int8_acc), work + deploy_work + int8_work

    (fp32_acc, int8_acc), work = WORK_CACHE.once(evaluate_key(model_ref, num_classes, source, test, bits), run)
    return fp32_acc, int8_acc, work


def evaluate_payload(
    payload: bytes,
    model_ref: ModelRef | str,
    num_classes: int,
    source: Samples | dict[str, np.ndarray] | None,
    test: Samples,
    bits: int,
) -> tuple[float, float]:
    """fp32 and deployed accuracy of a global model sent as its fp32 payload (a worker's task).

    Bytes and arrays, not tensors (the ranges come as arrays): a process pool would move each
    tensor's storage into shared memory in place, from a background thread, while the engine
    goes on reading it.
    """
    if isinstance(source, dict):
        source = {k: torch.as_tensor(v) for k, v in source.items()}
    fp32_acc, int8_acc, _ = evaluate_global(decode_to_fp32(payload), model_ref, num_classes, source, test, bits)
    return fp32_acc, int8_acc


def evaluation_work(
    state: dict[str, torch.Tensor],
    model_ref: ModelRef | str,
    num_classes: int,
    source: DeploySource,
    test: Samples,
    bits: int,
) -> WorkProfile:
    """The work of :func:`evaluate_global`, which is the same for every global state of a
    model and kind of source: the cached profile (traced now, on ``state``, if no evaluation
    ran yet)."""
    cached = WORK_CACHE.get(evaluate_key(model_ref, num_classes, source, test, bits))
    if cached is not None:
        return cached
    return evaluate_global(state, model_ref, num_classes, source, test, bits, price_only=True)[2]


@dataclass(frozen=True)
class Update:
    """An update as the server (or a site's gateway) receives it.

    ``label`` is the strategy it was written with (``fp32``, ``ptq8``, ...), which fixes its
    format and so the work of reading it; ``payload`` is its bytes, absent in timing-only mode.
    """

    payload: bytes | None
    num_samples: int
    label: str
    nbytes: int
    decoded: dict[str, torch.Tensor] | None = field(default=None, compare=False, repr=False)
    """What decoding the payload gives, if it was already decoded where it was written."""
    ranges: LayerRanges | None = field(default=None, compare=False, repr=False)
    """The input ranges the payload carries, if it was already decoded where it was written."""
    base_state: dict[str, torch.Tensor] | None = field(default=None, compare=False, repr=False)
    """The state of the model version it was trained from, which FedBuff's step subtracts (full mode)."""


def read_key(arch: Arch, label: str, with_ranges: bool) -> tuple:
    """Decoding one update of a format (and its ranges) and bringing it into the global model's form."""
    return ("read-update", arch, label, with_ranges)


def fedavg_key(arch: Arch, n_updates: int, with_ranges: bool) -> tuple:
    return ("fedavg", arch, n_updates, with_ranges)


def mix_key(arch: Arch, n_updates: int, against_base: bool, with_ranges: bool, first_ranges: bool) -> tuple:
    """An asynchronous step; ``first_ranges``: no ranges were deployed yet (their mean is taken)."""
    return ("mix", arch, n_updates, against_base, with_ranges, first_ranges and with_ranges)


def gateway_write_key(arch: Arch, with_ranges: bool) -> tuple:
    return ("gateway-write", arch, with_ranges)


@dataclass(frozen=True)
class Mixing:
    """How an asynchronous mode applies updates (:func:`fedhq_sim.aggregate.mix`): each
    update's coefficient, and whether its change is taken from the version it was trained
    from (FedBuff, semi-sync) or from the current model (FedAsync)."""

    coefficients: tuple[float, ...]
    against_base: bool
    first_ranges: bool = False
    """No activation ranges were deployed yet: the step takes the updates' mean (timing-only
    mode prices that step; full mode knows it from its own state)."""


@dataclass(frozen=True)
class Aggregate:
    """The FedAvg of a round's updates, the mean of the ranges they carry, and the work."""

    state: dict[str, torch.Tensor]
    ranges: LayerRanges | None
    work: WorkProfile


def read_updates(
    updates: Sequence[Update], global_state: dict[str, torch.Tensor], arch: Arch, *, with_ranges: bool = False
) -> tuple[list[tuple[dict[str, torch.Tensor], int]], list[tuple[LayerRanges | None, int]], WorkProfile]:
    """Decode the updates and bring them into ``global_state``'s parameterization: their
    states and (``with_ranges``, each must carry them) input ranges, with their sample counts."""
    work = WorkProfile()

    def in_form(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # Every format decodes to the global model's full state_dict (quant/payload.py); in its
        # order, so the new global model serializes to the same bytes whatever its updates were.
        if state.keys() != global_state.keys():
            raise ValueError(f"an update's tensors {sorted(state.keys() ^ global_state.keys())} do not match the model")
        return {key: state[key] for key in global_state}

    def read(payload: bytes) -> tuple[tuple[dict[str, torch.Tensor], LayerRanges | None], WorkProfile]:
        if with_ranges:
            state, ranges, decode_work = traced_decode_update(payload)
        else:
            (state, decode_work), ranges = traced_decode(payload), None
        unfolded, unfold_work = traced(lambda: in_form(state))
        return (unfolded, ranges), decode_work + unfold_work

    states, ranges = [], []
    for update in updates:
        if update.payload is None:
            raise ValueError("aggregating needs the updates' bytes (they are absent in timing-only mode)")
        key = read_key(arch, update.label, with_ranges)
        if update.decoded is not None and WORK_CACHE.get(key) is not None:
            # Decoded where it was written, by the same decode: only brought into form here,
            # and charged the read this format was traced at.
            decoded = (update.decoded, update.ranges)
            (state, update_ranges), read_work = WORK_CACHE.once(
                key, lambda d=decoded: ((in_form(d[0]), d[1]), WorkProfile())
            )
        else:
            (state, update_ranges), read_work = WORK_CACHE.once(key, lambda p=update.payload: read(p))
        if with_ranges and update_ranges is None:
            raise ValueError(f"a {update.label} update carries no input ranges, which the deployment needs")
        states.append((state, update.num_samples))
        ranges.append((update_ranges, update.num_samples))
        work = work + read_work
    return states, ranges, work


def aggregate_updates(
    updates: Sequence[Update], global_state: dict[str, torch.Tensor], arch: Arch, *, with_ranges: bool = False
) -> Aggregate:
    """Decode the updates, bring them into ``global_state``'s parameterization, FedAvg them;
    ``with_ranges``, also the sample-weighted mean of their input ranges (each must carry them)."""
    states, ranges, work = read_updates(updates, global_state, arch, with_ranges=with_ranges)

    def average() -> tuple[dict[str, torch.Tensor], LayerRanges | None]:
        return fedavg(states), mean_ranges(ranges) if with_ranges else None

    (state, mean), aggregate_work = WORK_CACHE.run(fedavg_key(arch, len(states), with_ranges), average)
    return Aggregate(state, mean, work + aggregate_work)


def mix_updates(
    updates: Sequence[Update],
    coefficients: Sequence[float],
    global_state: dict[str, torch.Tensor],
    arch: Arch,
    *,
    against_base: bool,
    current_ranges: LayerRanges | None = None,
    with_ranges: bool = False,
) -> Aggregate:
    """An asynchronous mode's step (:func:`fedhq_sim.aggregate.mix`): each update's change
    from the version it was trained from (``against_base``, FedBuff) or from the current
    model (FedAsync), times its coefficient. The deployed ranges move by the same
    coefficients from the current ones (their sample-weighted mean while there are none)."""
    states, ranges, work = read_updates(updates, global_state, arch, with_ranges=with_ranges)
    refs = []
    for update in updates:
        if against_base and update.base_state is None:
            raise ValueError("an update without the version it was trained from cannot be applied against it")
        refs.append(update.base_state if against_base else global_state)

    def step() -> tuple[dict[str, torch.Tensor], LayerRanges | None]:
        state = mix(global_state, [(s, ref, c) for (s, _), ref, c in zip(states, refs, coefficients, strict=True)])
        if not with_ranges:
            return state, None
        if current_ranges is None:
            return state, mean_ranges(ranges)
        return state, mix(
            current_ranges, [(r, current_ranges, c) for (r, _), c in zip(ranges, coefficients, strict=True)]
        )

    key = mix_key(arch, len(states), against_base, with_ranges, current_ranges is None)
    (state, mixed), step_work = WORK_CACHE.run(key, step)
    return Aggregate(state, mixed, work + step_work)


def gateway_round(
    updates: Sequence[Update], global_state: dict[str, torch.Tensor], arch: Arch, *, with_ranges: bool = False
) -> tuple[bytes, LayerRanges | None, WorkProfile]:
    """A site gateway's work: aggregate its clients' updates into one fp32 update to send on
    (with the mean of their ranges, weighted by their samples, when they carry them)."""
    combined = aggregate_updates(updates, global_state, arch, with_ranges=with_ranges)
    payload, write_work = WORK_CACHE.once(
        gateway_write_key(arch, with_ranges),
        lambda: traced_serialize(lambda: fp32_message(combined.state, combined.ranges)),
    )
    return payload, combined.ranges, combined.work + write_work


def server_round(
    updates: Sequence[Update],
    global_state: dict[str, torch.Tensor],
    model_ref: ModelRef | str,
    num_classes: int,
    source: Samples | None,
    test: Samples,
    bits: int = 8,
) -> ServerResult:
    """Aggregate the reported updates into ``global_state``'s parameterization and evaluate:
    deployed on the server's calibration samples (``source``) or, without them, on the mean
    of the ranges the updates carry."""
    arch = (model_ref, num_classes, tuple(test.x.shape[1:]))
    combined = aggregate_updates(updates, global_state, arch, with_ranges=source is None)
    deploy_from = source if source is not None else combined.ranges
    fp32_acc, int8_acc, eval_work = evaluate_global(combined.state, model_ref, num_classes, deploy_from, test, bits)
    return ServerResult(combined.state, fp32_acc, int8_acc, combined.work + eval_work)
