"""Quantized updates of batch-norm models, back in the global model's parameterization.

Converting a model to int8 folds each batch norm into the convolution before it: weights
``W' = W * s`` with ``s = gamma / sqrt(var + eps)`` per output channel, bias
``b' = beta - s * mean`` (plus ``s * b`` for a convolution bias). A quantized update thus
has no folded-in batch norm left, while the server keeps the unfused model. The update
carries the client's batch-norm parameters in fp32 beside the int8 weights, and the server
undoes the fold with them: ``W = W' / s`` and ``beta = b' + s * mean``, which gives back the
client's unfused model up to the int8 rounding of ``W'``. An update without them (an older
format) is unfolded with the global model's batch norm: exact in inference all the same.
"""

from __future__ import annotations

import torch
from torch import nn

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def unfold_batch_norm(model: nn.Module, folded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A full state dict for ``model`` (the global model) from a folded, dequantized update."""
    modules = dict(model.named_modules())
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    written: set[str] = set()
    for group in getattr(model, "fuse_groups", ()):
        layer = group[0]
        norm = next((name for name in group[1:] if isinstance(modules[name], _NORMS)), None)
        if norm is None:
            continue
        weight = folded[f"{layer}.weight"]
        bias = folded.get(f"{layer}.bias", torch.zeros(weight.shape[0]))
        for param in ("weight", "running_mean", "running_var"):
            state[f"{norm}.{param}"] = folded.get(f"{norm}.{param}", state[f"{norm}.{param}"])
            written.add(f"{norm}.{param}")
        gamma = state[f"{norm}.weight"]
        mean, var = state[f"{norm}.running_mean"], state[f"{norm}.running_var"]
        scale = gamma / torch.sqrt(var + modules[norm].eps)
        scale = torch.where(scale.abs() < 1e-12, torch.full_like(scale, 1e-12), scale)  # a dead channel
        state[f"{layer}.weight"] = weight / scale.reshape(-1, *([1] * (weight.dim() - 1)))
        if modules[layer].bias is not None:
            state[f"{layer}.bias"] = torch.zeros_like(bias)
        state[f"{norm}.bias"] = bias + scale * mean
        written |= {f"{layer}.weight", f"{layer}.bias", f"{norm}.bias"}
    for key, value in folded.items():
        if key in written:
            continue
        if key not in state:
            raise ValueError(f"the update has '{key}', which the model does not")
        state[key] = value
    return state
