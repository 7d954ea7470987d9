"""The quantization backend: integer quantization of any unmodified ``nn.Module``.

This is the one module that knows how a model is quantized; the rest of the package calls
:func:`prepare_ptq`, :func:`calibrate`, :func:`prepare_qat`, :func:`convert` and
:func:`run_deployed`, and :mod:`fedhq_sim.quant.payload` encodes what :func:`convert` gives.

**How.** A copy of the model has every ``nn.Conv1d/2d/3d`` and ``nn.Linear`` swapped (a class
swap: same parameters, same ``state_dict`` keys) for a subclass that quantizes its input
activation (per tensor, affine, unsigned ``bits``) and its weight (per output channel,
symmetric, signed ``bits``) with PyTorch's core fake-quantization operators
(``torch.fake_quantize_per_tensor_affine`` and ``..._per_channel_affine``, whose gradients
are the straight-through estimator). Nothing in the user's module has to change: no stubs,
no fuse lists, no ``FloatFunctional``. PTQ observes the activation ranges on calibration
samples (min/max); QAT trains with fake quantization, each batch setting its own ranges.
:func:`convert` rounds the weights to integers and freezes the ranges: the result is a
reference model (it computes in fp32 with the integer grid's rounding points), which is
what accuracy needs; what a device's int8 kernels would cost is priced from its profile
(:func:`run_deployed` traces under :func:`fedhq_sim.work.int8_execution`).

**Batch norm** stays a float layer and is not folded. With per-output-channel symmetric
weights that loses nothing: folding a batch norm multiplies each output channel of the
weight by one factor, and a max-abs per-channel grid scales by the same factor, so the
folded integer weights are the unfolded ones (up to float rounding at a tie, and the sign
of a channel whose factor is negative). Updates therefore carry the unfolded integer weights and the
batch-norm parameters, the same bytes as a folded update, and the server reads them back
without undoing any fold.

**Why not torchao's PT2E flow** (``prepare_qat_pt2e``/``convert_pt2e``): measured here on
torch 2.13 with torchao 0.18, converting a QAT model with one conv + batch norm took 15-28 s,
because ``_fold_conv_bn_qat`` exports 96 replacement patterns on every call, and preparing it
2 s: per client and round, that is minutes of host time for a round of milliseconds of work.
PT2E's quantizers also place PTQ's and QAT's quantization points differently; here they are
the same, so PTQ and QAT differ only in training, as design.md asks.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from fedhq_sim.work import WorkProfile, int8_execution, int8_layer, marker, traced

BACKEND = "fake-quantized conv/linear layers (per-channel symmetric weights, per-tensor affine inputs)"
"""What ``run.json`` says quantized the models."""

_EPS = torch.finfo(torch.float32).eps


@dataclass(frozen=True)
class Ranges:
    """Integer ranges at a bit width: unsigned activations, signed symmetric weights."""

    act_min: int
    act_max: int
    weight_min: int
    weight_max: int

    @classmethod
    def at(cls, bits: int) -> Ranges:
        return cls(0, 2**bits - 1, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


# How far each QAT batch moves a layer's input range towards its own: PyTorch's default moving
# average. A QAT client starts each round from the deployed grid the server broadcast (the
# sample-weighted mean of the clients' ranges; the first batch's range where none is deployed
# yet), so it trains on nearly the grid the devices will run, and the range it sends back is
# that grid moved by its own data. With 1.0 (the range following each batch, as the eager
# backend's recipe did) a round would start from, and send back, its last batch's range.
QAT_RANGE_AVERAGING = 0.01


class ActivationQuantizer(nn.Module):
    """The range of a layer's input and its fake quantization.

    ``mode`` is ``observe`` (PTQ calibration: widen the min/max seen, pass values through),
    ``train`` (QAT: the range moves by ``QAT_RANGE_AVERAGING`` towards each batch's, and the
    values are fake-quantized) or ``frozen`` (the converted model: the last range,
    fake-quantized). Its buffers are not part of the ``state_dict``: a model's
    parameters keep the names of the unquantized model.
    """

    def __init__(self, ranges: Ranges, mode: str) -> None:
        super().__init__()
        self.qmin, self.qmax, self.mode = ranges.act_min, ranges.act_max, mode
        # The range starts empty at zero, which every range holds (zero must be exact); QAT
        # counts its batches, so that the first sets the range.
        self.register_buffer("min_val", torch.tensor(0.0), persistent=False)
        self.register_buffer("max_val", torch.tensor(0.0), persistent=False)
        self.register_buffer("batches", torch.tensor(0), persistent=False)
        self.register_buffer("scale", torch.tensor(1.0), persistent=False)
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32), persistent=False)

    def set_range(self, low: torch.Tensor, high: torch.Tensor) -> None:
        """Put the grid on ``[low, high]``, widened to hold zero (which must be exact)."""
        low, high = torch.clamp(low, max=0.0), torch.clamp(high, min=0.0)  # zero is exact
        scale = torch.clamp((high - low) / (self.qmax - self.qmin), min=_EPS)
        zero_point = torch.clamp(self.qmin - torch.round(low / scale), self.qmin, self.qmax)
        self.min_val.copy_(low)
        self.max_val.copy_(high)
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point.to(torch.int32))

    def start_at(self, low: torch.Tensor, high: torch.Tensor) -> None:
        """Train from the range ``[low, high]`` (the deployed grid), or, where it is NaN (nothing
        deployed yet), from the first batch's, as without it. Tensor operations only, so that
        both cases run the same operations (a step's work is one profile)."""
        known = ~torch.isnan(low)
        self.set_range(torch.where(known, low, 0.0), torch.where(known, high, 0.0))
        self.batches.copy_(known.to(self.batches.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "observe":
            with torch.no_grad():
                self.set_range(torch.minimum(self.min_val, x.min()), torch.maximum(self.max_val, x.max()))
            return x
        if self.mode == "train" and self.training:
            with torch.no_grad():  # the same operations every batch: a step's work is one profile
                low, high = x.detach().min(), x.detach().max()
                first = self.batches == 0  # the first batch sets the range, as PyTorch's observers do
                low = torch.where(first, low, torch.lerp(self.min_val, low, QAT_RANGE_AVERAGING))  # exact at 1.0
                high = torch.where(first, high, torch.lerp(self.max_val, high, QAT_RANGE_AVERAGING))
                self.batches += 1
                self.set_range(low, high)
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.qmin, self.qmax)


def weight_scales(weight: torch.Tensor, ranges: Ranges) -> torch.Tensor:
    """Per-output-channel symmetric scales: each channel's largest magnitude maps to the top
    level (127 at 8 bits; the lowest level, -128, stays unused, as in TFLite's int8 weights).

    Over half the range instead (PyTorch's observers), the largest magnitude would land on a
    rounding tie (127.5), and a weight scaled by a folded batch norm could round either way.
    """
    amax = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1)
    return torch.clamp(amax / ranges.weight_max, min=_EPS)


def _fake_quantize_weight(weight: torch.Tensor, ranges: Ranges) -> torch.Tensor:
    scales = weight_scales(weight, ranges)
    zero_points = torch.zeros(weight.shape[0], dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scales, zero_points, 0, ranges.weight_min, ranges.weight_max)


class _Quantized:
    """Mixin of the swapped layers: quantize the input, and the weight while training (QAT).

    While PTQ calibrates, the weight stays fp32 (the model computes what the float model
    does); once converted it holds its integer grid's values already.
    """

    input_quantizer: ActivationQuantizer
    ranges: Ranges
    converted: bool

    def _quantized_weight(self) -> torch.Tensor:
        if self.converted or self.input_quantizer.mode == "observe":
            return self.weight
        return _fake_quantize_weight(self.weight, self.ranges)

    def _compute(self, layer: Callable[[], torch.Tensor]) -> torch.Tensor:
        if not self.converted:
            return layer()
        with int8_layer():  # a device runs this layer as an int8 kernel
            return layer()


class QuantizedLinear(_Quantized, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._compute(lambda: functional.linear(self.input_quantizer(x), self._quantized_weight(), self.bias))


class _QuantizedConv(_Quantized):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._compute(lambda: self._conv_forward(self.input_quantizer(x), self._quantized_weight(), self.bias))


class QuantizedConv1d(_QuantizedConv, nn.Conv1d):
    pass


class QuantizedConv2d(_QuantizedConv, nn.Conv2d):
    pass


class QuantizedConv3d(_QuantizedConv, nn.Conv3d):
    pass


_SWAPS: dict[type, type] = {
    nn.Linear: QuantizedLinear,
    nn.Conv1d: QuantizedConv1d,
    nn.Conv2d: QuantizedConv2d,
    nn.Conv3d: QuantizedConv3d,
}
"""The layer classes whose weights and inputs are quantized (every other layer runs in fp32),
and the class each becomes."""
QUANTIZED_CLASSES = tuple(_SWAPS.values())


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers a model quantizes, by name: every conv and linear layer (exact class only:
    a subclass may compute something else in its ``forward``)."""
    return {name: m for name, m in model.named_modules() if type(m) in _SWAPS or isinstance(m, _Quantized)}


def _prepared_copy(model: nn.Module, bits: int, mode: str) -> nn.Module:
    prepared = copy.deepcopy(model)
    ranges = Ranges.at(bits)
    for layer in quantized_layers(prepared).values():
        layer.__class__ = _SWAPS[type(layer)]
        layer.ranges, layer.converted = ranges, False
        layer.input_quantizer = ActivationQuantizer(ranges, mode)
    return prepared


def prepare_ptq(model: nn.Module, bits: int = 8) -> nn.Module:
    """An eval-mode copy of a trained fp32 model that records its layers' input ranges."""
    return _prepared_copy(model, bits, "observe").eval()


def calibrate(prepared: nn.Module, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """Run the calibration batches through a PTQ-prepared model; returns its (fp32) outputs,
    which comparing with the converted model's measures the PTQ error."""
    with torch.no_grad():
        return torch.cat([prepared(x) for x in batches])


def prepare_qat(model: nn.Module, bits: int = 8) -> nn.Module:
    """A train-mode copy of an fp32 model that trains with fake-quantized inputs and weights."""
    return _prepared_copy(model, bits, "train").train()


def convert(prepared: nn.Module) -> nn.Module:
    """The deployed model of a calibrated (PTQ) or trained (QAT) one: integer weights, frozen
    ranges. Each quantized layer keeps ``weight_int`` and ``weight_scale`` for its update, and
    computes under :func:`fedhq_sim.work.int8_layer` (a device runs it as an int8 kernel)."""
    converted = copy.deepcopy(prepared).eval()
    with torch.no_grad():
        for layer in quantized_layers(converted).values():
            # A layer that saw no input (an unused head) keeps the empty range [0, 0]: it never
            # runs, and its weights are rounded like every other layer's.
            scales = weight_scales(layer.weight, layer.ranges)
            shape = (-1,) + (1,) * (layer.weight.dim() - 1)
            integers = torch.clamp(
                torch.round(layer.weight / scales.reshape(shape)), layer.ranges.weight_min, layer.ranges.weight_max
            )
            layer.weight_int = integers.to(torch.int8)
            layer.weight_scale = scales
            layer.weight.copy_(integers * scales.reshape(shape))
            layer.converted = True
            layer.input_quantizer.mode = "frozen"
    return converted


def run_deployed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Inference with a converted model; traced as the int8 kernels a device would run."""
    with int8_execution(), torch.no_grad():
        return model(x)


def _module_count(model: nn.Module) -> int:
    return sum(1 for _ in model.modules())


def traced_prepare_ptq(model: nn.Module, bits: int = 8) -> tuple[nn.Module, WorkProfile]:
    """:func:`prepare_ptq` with its work: the traced ops plus one marker per module visited."""
    prepared, work = traced(lambda: prepare_ptq(model, bits))
    return prepared, work + marker("prepare_ptq", _module_count(model))


def traced_prepare_qat(model: nn.Module, bits: int = 8) -> tuple[nn.Module, WorkProfile]:
    """:func:`prepare_qat` with its work: the traced ops plus one marker per module visited."""
    prepared, work = traced(lambda: prepare_qat(model, bits))
    return prepared, work + marker("prepare_qat", _module_count(model))


def traced_convert(prepared: nn.Module) -> tuple[nn.Module, WorkProfile]:
    """:func:`convert` with its work: the traced ops plus one marker per module visited."""
    converted, work = traced(lambda: convert(prepared))
    return converted, work + marker("convert", _module_count(prepared))
