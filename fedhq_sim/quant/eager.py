"""The quantization backend: PyTorch's eager-mode ``torch.ao.quantization``.

Eager mode is deprecated in favour of torchao, but in torch 2.13 it is the only flow with
real int8 CPU kernels that needs no ``torch.compile`` and takes any batch size (see
shared/reference/quantization-devices-data.md, section 1). Everything that touches
``torch.ao.quantization`` lives here, so a torchao backend can replace this one module.

The deprecation warnings it triggers are silenced by their exact messages, nowhere else.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.ao import quantization as tq

from fedhq_sim.work import WorkProfile, marker, traced

# The three warnings torch 2.13 prints for eager quantization; each is known and harmless here.
_KNOWN_WARNINGS = (
    (DeprecationWarning, r"torch\.ao\.quantization is deprecated"),
    (UserWarning, r"Please use quant_min and quant_max to specify the range for observers"),
    (UserWarning, r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor creation"),
)


def quant_engine() -> str:
    """The int8 kernel library: ``x86`` on Intel/AMD hosts, ``qnnpack`` on ARM."""
    return "x86" if "x86" in torch.backends.quantized.supported_engines else "qnnpack"


@contextmanager
def eager_quantization() -> Iterator[None]:
    """Select the int8 engine and silence exactly the known deprecation warnings."""
    with warnings.catch_warnings():
        for category, message in _KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        previous = torch.backends.quantized.engine
        torch.backends.quantized.engine = quant_engine()
        try:
            yield
        finally:
            torch.backends.quantized.engine = previous


def _fused_copy(model: nn.Module, *, for_training: bool) -> nn.Module:
    prepared = copy.deepcopy(model)
    groups = [list(g) for g in getattr(model, "fuse_groups", ())]
    if for_training:
        prepared.train()
        return tq.fuse_modules_qat(prepared, groups) if groups else prepared
    prepared.eval()
    return tq.fuse_modules(prepared, groups) if groups else prepared


def _ranges(bits: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Activation (unsigned) and weight (signed, symmetric) integer ranges at ``bits``.

    8 bits keep the x86-safe 7-bit activations. Below 8 bits the values are stored in int8
    and run on the int8 kernels, restricted to the narrower range: what low-bit PTQ and QAT
    simulations do on hardware without low-bit kernels.
    """
    if bits == 8:
        return (0, 127), (-128, 127)
    return (0, 2**bits - 1), (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def ptq_qconfig(bits: int = 8) -> tq.QConfig:
    """Min/max observers: per-tensor activations, per-channel symmetric weights.

    The engine's default uses a histogram observer whose range search runs tens of thousands
    of small operations (count them with :func:`fedhq_sim.work.traced` around ``convert``):
    on a gateway that costs more than the local training itself. Min/max calibration is what
    edge toolchains do, and it is the same range estimate that QAT's fake quantization uses,
    so PTQ and QAT differ only in training.

    The recipe is the same on every host (activations in 7 bits, which the x86 kernels need
    to avoid overflow and the ARM kernels accept), so the work a client traces, and hence its
    charge and its accuracy, does not depend on where the simulation runs; only the int8
    kernel library (:func:`quant_engine`) does.
    """
    if bits == 8:
        return tq.QConfig(
            activation=tq.MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=True),
            weight=tq.default_per_channel_weight_observer,
        )
    (a_min, a_max), (w_min, w_max) = _ranges(bits)
    return tq.QConfig(
        activation=tq.MinMaxObserver.with_args(dtype=torch.quint8, quant_min=a_min, quant_max=a_max),
        weight=tq.PerChannelMinMaxObserver.with_args(
            dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=w_min, quant_max=w_max
        ),
    )


# The fake-quant range follows the current batch (no moving average). A local round is a few
# dozen steps from a model that changed since the last round; with PyTorch's default constant
# (0.01) the range lags so far that the clamped logits stop learning: on the largest client of
# scenarios/fedhq_comparison.yaml, 2 epochs of 4-bit QAT from a fresh model end at loss 1.99
# with 0.01 and 1.27 with 1.0 (fp32: 1.23); ``bench/qat_checks.py`` measures it, and
# ``tests/test_local_work.py`` keeps the gap small.
QAT_RANGE_AVERAGING = 1.0


def qat_qconfig(bits: int = 8) -> tq.QConfig:
    """Fused observer + fake quantization, per-channel symmetric weights; the same on every host.

    The ranges are those of :func:`ptq_qconfig` (7-bit activations at 8 bits, for the reason
    given there), estimated per batch (see ``QAT_RANGE_AVERAGING``).
    """
    (a_min, a_max), (w_min, w_max) = _ranges(bits)
    return tq.QConfig(
        activation=tq.FusedMovingAvgObsFakeQuantize.with_args(
            observer=tq.MovingAverageMinMaxObserver,
            quant_min=a_min,
            quant_max=a_max,
            dtype=torch.quint8,
            averaging_constant=QAT_RANGE_AVERAGING,
        ),
        weight=tq.FusedMovingAvgObsFakeQuantize.with_args(
            observer=tq.MovingAveragePerChannelMinMaxObserver,
            quant_min=w_min,
            quant_max=w_max,
            dtype=torch.qint8,
            qscheme=torch.per_channel_symmetric,
            averaging_constant=QAT_RANGE_AVERAGING,
        ),
    )


def prepare_ptq(model: nn.Module, bits: int = 8) -> nn.Module:
    """A fused copy of a trained fp32 model with observers, ready for calibration."""
    with eager_quantization():
        prepared = _fused_copy(model, for_training=False)
        prepared.qconfig = ptq_qconfig(bits)
        return tq.prepare(prepared)


def calibrate(prepared: nn.Module, batches: Iterator[torch.Tensor] | list[torch.Tensor]) -> torch.Tensor:
    """Run observer-instrumented forward passes so activation ranges are known.

    Observers do not change what flows through, so the outputs returned (concatenated) are
    the float model's; comparing them with the converted model's measures the PTQ error.
    """
    with eager_quantization(), torch.no_grad():
        return torch.cat([prepared(x) for x in batches])


def prepare_qat(model: nn.Module, bits: int = 8) -> nn.Module:
    """A fused copy of an fp32 model with fake quantization, ready for training."""
    with eager_quantization():
        prepared = _fused_copy(model, for_training=True)
        prepared.qconfig = qat_qconfig(bits)
        return tq.prepare_qat(prepared)


def convert(prepared: nn.Module) -> nn.Module:
    """The int8 model of a calibrated (PTQ) or trained (QAT) prepared model."""
    with eager_quantization():
        prepared.eval()
        return tq.convert(prepared)


def run_int8(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Inference with a converted model (the int8 kernels of the selected engine)."""
    with eager_quantization(), torch.no_grad():
        return model(x)


_NORM_PARAMS = ("weight", "bias", "running_mean", "running_var")


def batch_norm_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The batch-norm parameters of a trained model, by their names in the unfused model.

    Works on the unfused fp32 model (PTQ trains it) and on a QAT-prepared model, whose fused
    conv+BN modules hold the batch norm as ``.bn``. Conversion folds these into the int8
    weights; the update carries them too, so the server can undo the fold exactly.
    """
    modules = dict(model.named_modules())
    state: dict[str, torch.Tensor] = {}
    for group in getattr(model, "fuse_groups", ()):
        fused_norm = getattr(modules.get(group[0]), "bn", None)
        for norm_name in group[1:]:
            norm = fused_norm if fused_norm is not None else modules.get(norm_name)
            if isinstance(norm, nn.modules.batchnorm._BatchNorm):
                state |= {f"{norm_name}.{p}": getattr(norm, p).detach().clone() for p in _NORM_PARAMS}
                break
    return state


def _module_count(model: nn.Module) -> int:
    return sum(1 for _ in model.modules())


def traced_prepare_ptq(model: nn.Module, bits: int = 8) -> tuple[nn.Module, WorkProfile]:
    """:func:`prepare_ptq` with its work: the traced ops plus one marker per module rewritten."""
    prepared, work = traced(lambda: prepare_ptq(model, bits))
    return prepared, work + marker("prepare_ptq", _module_count(model))


def traced_prepare_qat(model: nn.Module, bits: int = 8) -> tuple[nn.Module, WorkProfile]:
    """:func:`prepare_qat` with its work: the traced ops plus one marker per module rewritten."""
    prepared, work = traced(lambda: prepare_qat(model, bits))
    return prepared, work + marker("prepare_qat", _module_count(model))


def traced_convert(prepared: nn.Module) -> tuple[nn.Module, WorkProfile]:
    """:func:`convert` with its work: the traced ops plus one marker per module rewritten."""
    converted, work = traced(lambda: convert(prepared))
    return converted, work + marker("convert", _module_count(prepared))
