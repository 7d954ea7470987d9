"""The server's real work in a round: decode, aggregate, deploy and evaluate.

The updates are decoded (and dequantized), averaged by FedAvg, and the new global fp32
model is quantized by PTQ on the server's calibration samples: that int8 model is what the
devices would run, and its test accuracy is the **deployed accuracy**. The fp32 accuracy is
reported beside it. The work is traced so the engine can charge it on the server's profile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from fedhq_sim.aggregate import fedavg
from fedhq_sim.data import Samples
from fedhq_sim.models import Arch, ModelRef, traced_build, traced_load
from fedhq_sim.quant import backend
from fedhq_sim.quant.payload import decode_to_fp32, fp32_message, traced_decode, traced_serialize
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


def deploy_int8(model: nn.Module, calibration: Samples, bits: int = 8) -> tuple[nn.Module, WorkProfile]:
    """The model the devices run: PTQ of ``model`` at ``bits`` on the server's calibration samples."""
    prepared, prepare_work = backend.traced_prepare_ptq(model, bits)
    _, calibrate_work = traced(lambda: backend.calibrate(prepared, list(torch.split(calibration.x, EVAL_BATCH))))
    deployed, convert_work = backend.traced_convert(prepared)
    return deployed, prepare_work + calibrate_work + convert_work


def evaluate_key(model_ref: ModelRef | str, num_classes: int, calibration: Samples, test: Samples, bits: int) -> tuple:
    return ("evaluate", model_ref, num_classes, tuple(calibration.x.shape), tuple(test.x.shape), bits)


def evaluate_global(
    state: dict[str, torch.Tensor],
    model_ref: ModelRef | str,
    num_classes: int,
    calibration: Samples,
    test: Samples,
    bits: int = 8,
    *,
    price_only: bool = False,
) -> tuple[float, float, WorkProfile]:
    """fp32 and deployed (int8) test accuracy of a global state, with the work it took
    (``price_only``: the work alone, see :func:`accuracy`)."""

    def run() -> tuple[tuple[float, float], WorkProfile]:
        model, build_work = traced_build(model_ref, num_classes, seed=0, input_shape=tuple(test.x.shape[1:]))
        load_work = traced_load(model, state)
        fp32_acc, fp32_work = accuracy(model, test, int8=False, price_only=price_only)
        deployed, deploy_work = deploy_int8(model, calibration, bits)
        int8_acc, int8_work = accuracy(deployed, test, int8=True, price_only=price_only)
        return (fp32_acc, int8_acc), build_work + load_work + fp32_work + deploy_work + int8_work

    (fp32_acc, int8_acc), work = WORK_CACHE.once(evaluate_key(model_ref, num_classes, calibration, test, bits), run)
    return fp32_acc, int8_acc, work


def evaluate_payload(
    payload: bytes, model_ref: ModelRef | str, num_classes: int, calibration: Samples, test: Samples, bits: int
) -> tuple[float, float]:
    """fp32 and deployed accuracy of a global model sent as its fp32 payload (a worker's task).

    Bytes, not tensors: a process pool would move each tensor's storage into shared memory
    in place, from a background thread, while the engine goes on reading it.
    """
    fp32_acc, int8_acc, _ = evaluate_global(decode_to_fp32(payload), model_ref, num_classes, calibration, test, bits)
    return fp32_acc, int8_acc


def evaluation_work(
    state: dict[str, torch.Tensor],
    model_ref: ModelRef | str,
    num_classes: int,
    calibration: Samples,
    test: Samples,
    bits: int,
) -> WorkProfile:
    """The work of :func:`evaluate_global`, which is the same for every global state of a
    model: the cached profile (traced now, on ``state``, if no evaluation ran yet)."""
    cached = WORK_CACHE.get(evaluate_key(model_ref, num_classes, calibration, test, bits))
    if cached is not None:
        return cached
    return evaluate_global(state, model_ref, num_classes, calibration, test, bits, price_only=True)[2]


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


def read_key(arch: Arch, label: str) -> tuple:
    """Decoding one update of a format and bringing it into the global model's form."""
    return ("read-update", arch, label)


def fedavg_key(arch: Arch, n_updates: int) -> tuple:
    return ("fedavg", arch, n_updates)


def gateway_write_key(arch: Arch) -> tuple:
    return ("gateway-write", arch)


def aggregate_updates(
    updates: Sequence[Update], global_state: dict[str, torch.Tensor], arch: Arch
) -> tuple[dict[str, torch.Tensor], WorkProfile]:
    """Decode the updates, bring them into ``global_state``'s parameterization, FedAvg them."""
    work = WorkProfile()

    def in_form(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # Every format decodes to the global model's full state_dict (quant/payload.py); in its
        # order, so the new global model serializes to the same bytes whatever its updates were.
        if state.keys() != global_state.keys():
            raise ValueError(f"an update's tensors {sorted(state.keys() ^ global_state.keys())} do not match the model")
        return {key: state[key] for key in global_state}

    def read(payload: bytes) -> tuple[dict[str, torch.Tensor], WorkProfile]:
        state, decode_work = traced_decode(payload)
        unfolded, unfold_work = traced(lambda: in_form(state))
        return unfolded, decode_work + unfold_work

    states = []
    for update in updates:
        if update.payload is None:
            raise ValueError("aggregating needs the updates' bytes (they are absent in timing-only mode)")
        key = read_key(arch, update.label)
        if update.decoded is not None and WORK_CACHE.get(key) is not None:
            # Decoded where it was written, by the same decode: only brought into form here,
            # and charged the read this format was traced at.
            state, read_work = WORK_CACHE.once(key, lambda d=update.decoded: (in_form(d), WorkProfile()))
        else:
            state, read_work = WORK_CACHE.once(key, lambda p=update.payload: read(p))
        states.append((state, update.num_samples))
        work = work + read_work
    state, aggregate_work = WORK_CACHE.run(fedavg_key(arch, len(states)), lambda: fedavg(states))
    return state, work + aggregate_work


def gateway_round(
    updates: Sequence[Update], global_state: dict[str, torch.Tensor], arch: Arch
) -> tuple[bytes, WorkProfile]:
    """A site gateway's work: aggregate its clients' updates into one fp32 update to send on."""
    state, work = aggregate_updates(updates, global_state, arch)
    payload, write_work = WORK_CACHE.once(
        gateway_write_key(arch), lambda: traced_serialize(lambda: fp32_message(state))
    )
    return payload, work + write_work


def server_round(
    updates: Sequence[Update],
    global_state: dict[str, torch.Tensor],
    model_ref: ModelRef | str,
    num_classes: int,
    calibration: Samples,
    test: Samples,
    bits: int = 8,
) -> ServerResult:
    """Aggregate the reported updates into ``global_state``'s parameterization and evaluate."""
    arch = (model_ref, num_classes, tuple(test.x.shape[1:]))
    state, work = aggregate_updates(updates, global_state, arch)
    fp32_acc, int8_acc, eval_work = evaluate_global(state, model_ref, num_classes, calibration, test, bits)
    return ServerResult(state, fp32_acc, int8_acc, work + eval_work)
