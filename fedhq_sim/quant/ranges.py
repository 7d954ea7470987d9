"""Activation ranges for a deployment without server data: what each client sends, and how
the server combines them.

A deployed model quantizes the input of every conv and linear layer with a scale and zero
point, which come from the range [low, high] that input takes. That input is the network's
input for the first layer, and the output of whatever precedes each other layer (a residual
add, a pooling, an activation), so one range per quantized layer covers them all. A plant
server usually holds no plant data, so the ranges must come from the clients: a PTQ client
calibrates them on its own samples, a QAT client learns them while it trains, an fp32 client
observes them on its calibration samples. Each update carries one range per quantized layer
(the grid the client itself would run: recovered exactly from the scale and zero point it
sends), and the server deploys the aggregated model with their sample-weighted combination.

Outliers: a client whose data reach far beyond the others' (a sensor fault, a rare
condition) moves the sample-weighted **mean** of the ranges by its share of the samples only,
not to its own extreme as a union of the ranges (the lowest low, the highest high) would; a
large client with outlying data still moves it far, which is the case a robust combination
(a weighted median) would serve, and is not built.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from fedhq_sim.quant import backend

LayerRanges = dict[str, torch.Tensor]
"""A range per quantized layer, by layer name: a float32 tensor ``[low, high]``."""


def empty_ranges(model: nn.Module) -> LayerRanges:
    """A range ``[0, 0]`` for each quantized layer of ``model``: an update's ranges in form,
    for work that depends on their shape only (the timing-only mode's pricing)."""
    return {name: torch.zeros(2) for name in backend.quantized_layers(model)}


def unset_ranges(model: nn.Module) -> LayerRanges:
    """A NaN range for each quantized layer of ``model``: what the server broadcasts before any
    client has sent ranges (a QAT client then starts from its first batch's)."""
    return {name: torch.full((2,), math.nan) for name in backend.quantized_layers(model)}


def all_set(ranges: Mapping[str, torch.Tensor]) -> bool:
    """Whether every range is a number (not the NaN of :func:`unset_ranges`)."""
    return all(bool(torch.isfinite(r).all()) for r in ranges.values())


def grid_range(scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """The range an activation grid covers: ``[(qmin - zp) * scale, (qmax - zp) * scale]``."""
    zp = zero_point.to(torch.float32)
    return torch.stack([(qmin - zp) * scale, (qmax - zp) * scale]).to(torch.float32).reshape(2)


def layer_ranges(prepared: nn.Module) -> LayerRanges:
    """The range of each quantized layer's input grid in a prepared (calibrated or trained) model."""
    ranges = {}
    for name, layer in backend.quantized_layers(prepared).items():
        q = layer.input_quantizer
        ranges[name] = grid_range(q.scale.detach(), q.zero_point, q.qmin, q.qmax)
    return ranges


def stacked(ranges: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """One update's ranges as a ``(layers, 2)`` tensor, layers in name order."""
    return torch.stack([ranges[name] for name in sorted(ranges)])


def mean_ranges(ranges: Sequence[tuple[Mapping[str, torch.Tensor], int]]) -> LayerRanges:
    """Each layer's sample-weighted mean of low and high over the updates (as FedAvg weights
    their parameters). A running sum, one update at a time, so that its work grows by the same
    operations per update (the timing-only mode extrapolates it, as it does FedAvg's)."""
    if not ranges:
        raise ValueError("no ranges to aggregate")
    names = sorted(ranges[0][0])
    total, weight = torch.zeros(len(names), 2, dtype=torch.float64), 0
    for client_ranges, n_samples in ranges:
        if sorted(client_ranges) != names:
            raise ValueError(f"an update's ranges {sorted(set(client_ranges) ^ set(names))} do not match the model")
        total = total + n_samples * stacked(client_ranges).to(torch.float64)
        weight += n_samples
    mean = (total / weight).to(torch.float32)
    return {name: mean[i] for i, name in enumerate(names)}


def _per_layer(prepared: nn.Module, ranges: Mapping[str, torch.Tensor], put: str) -> None:
    """Call each quantized layer's input quantizer method ``put`` with the layer's ``low, high``."""
    layers = backend.quantized_layers(prepared)
    if layers.keys() != ranges.keys():
        raise ValueError(f"the ranges {sorted(layers.keys() ^ ranges.keys())} do not match the model")
    with torch.no_grad():
        for name, layer in layers.items():
            low, high = ranges[name]
            getattr(layer.input_quantizer, put)(low, high)


def set_ranges(prepared: nn.Module, ranges: Mapping[str, torch.Tensor]) -> None:
    """Put each quantized layer's input grid of a PTQ-prepared model on its given range (no
    data needed); converting it then gives the deployed model."""
    _per_layer(prepared, ranges, "set_range")


def start_from(prepared: nn.Module, ranges: Mapping[str, torch.Tensor]) -> None:
    """Start a QAT-prepared model's input grids from the broadcast ranges (NaN: not yet
    deployed, the first batch sets it), so that it trains on the grid the devices run."""
    _per_layer(prepared, ranges, "start_at")
