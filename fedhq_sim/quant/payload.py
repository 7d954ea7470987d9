"""The wire format of model updates, and the server's dequantization.

An fp32 update is the model's ``state_dict``. A quantized update carries, per quantized
layer, its int8 weight values as plain ``torch.int8`` tensors with per-channel scales and
zero points, its fp32 bias, and the output activation scale; it avoids the deprecated
quantized dtypes on the wire. Both are serialized with ``torch.save`` and read back with
``torch.load(weights_only=True)``, and the payload's length is what the network carries.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from fedhq_sim.work import WorkProfile, marker, traced


def _serialize(obj: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _deserialize(payload: bytes) -> dict:
    return torch.load(io.BytesIO(payload), weights_only=True)


def fp32_message(state: dict[str, torch.Tensor]) -> dict:
    """The message of an fp32 update: the ``state_dict`` (parameters and buffers), copied."""
    return {"format": "fp32", "state": {k: v.detach().clone() for k, v in state.items()}}


def encode_fp32(state: dict[str, torch.Tensor]) -> bytes:
    """Serialize an fp32 ``state_dict`` (parameters and buffers)."""
    return _serialize(fp32_message(state))


def _quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if callable(getattr(m, "weight", None))}


def quantized_message(model: nn.Module, bits: int, batch_norm: dict[str, torch.Tensor] | None = None) -> dict:
    """The message of a quantized update: integer weights plus their quantization parameters,
    and the fp32 batch-norm parameters that conversion folded into them (if any)."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for name, layer in _quantized_layers(model).items():
        weight = layer.weight()
        if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            scales = weight.q_per_channel_scales().to(torch.float32)
            zero_points = weight.q_per_channel_zero_points().to(torch.int32)
            axis = torch.tensor(weight.q_per_channel_axis())
        else:
            scales = torch.tensor([weight.q_scale()], dtype=torch.float32)
            zero_points = torch.tensor([weight.q_zero_point()], dtype=torch.int32)
            axis = torch.tensor(-1)
        bias = layer.bias()
        values = weight.int_repr()
        layers[name] = {
            "weight_int": pack_nibbles(values) if bits == 4 else values.clone(),
            "weight_shape": torch.tensor(values.shape),
            "scales": scales,
            "zero_points": zero_points,
            "axis": axis,
            "bias": bias.detach().clone() if bias is not None else torch.empty(0),
            "out_scale": torch.tensor(float(layer.scale)),
            "out_zero_point": torch.tensor(int(layer.zero_point)),
        }
    return {"format": "quantized", "bits": bits, "layers": layers, "batch_norm": dict(batch_norm or {})}


def encode_quantized(model: nn.Module, bits: int, batch_norm: dict[str, torch.Tensor] | None = None) -> bytes:
    """Serialize a converted (int8) model as integer weights plus their quantization parameters."""
    return _serialize(quantized_message(model, bits, batch_norm))


def pack_nibbles(values: torch.Tensor) -> torch.Tensor:
    """Signed 4-bit values (in [-8, 7], held in int8) packed two per byte (uint8)."""
    flat = (values.flatten().to(torch.int16) + 8).to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return flat[0::2] | (flat[1::2] << 4)


def unpack_nibbles(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The int8 values :func:`pack_nibbles` packed, in ``shape``."""
    pairs = torch.stack([packed & 0x0F, packed >> 4], dim=1).flatten()
    count = int(torch.tensor(shape).prod())
    return (pairs[:count].to(torch.int16) - 8).to(torch.int8).reshape(shape)


def _dequantize(layer: dict[str, torch.Tensor], bits: int) -> torch.Tensor:
    shape = torch.Size(layer["weight_shape"].tolist())
    values = unpack_nibbles(layer["weight_int"], shape) if bits == 4 else layer["weight_int"]
    values = values.to(torch.float32)
    axis = int(layer["axis"])
    if axis < 0:
        return (values - layer["zero_points"].float()) * layer["scales"]
    shape = [1] * values.dim()
    shape[axis] = -1
    return (values - layer["zero_points"].float().view(shape)) * layer["scales"].view(shape)


def decode_to_fp32(payload: bytes) -> dict[str, torch.Tensor]:
    """The fp32 ``state_dict`` an update stands for (dequantized when it is quantized)."""
    return _message_state(_deserialize(payload))


def _message_state(message: dict) -> dict[str, torch.Tensor]:
    if message["format"] == "fp32":
        return message["state"]
    state: dict[str, torch.Tensor] = {}
    for name, layer in message["layers"].items():
        state[f"{name}.weight"] = _dequantize(layer, int(message["bits"]))
        if layer["bias"].numel():
            state[f"{name}.bias"] = layer["bias"]
    return state | message.get("batch_norm", {})


def _tensor_count(message: dict) -> int:
    return sum(isinstance(leaf, torch.Tensor) for leaf in tree_flatten(message)[0])


def traced_serialize(build_message: Callable[[], dict]) -> tuple[bytes, WorkProfile]:
    """Build a message (``fp32_message``/``quantized_message``) and serialize it, with the work:
    traced ops plus one marker per payload and one per tensor written."""
    message, build_work = traced(build_message)
    payload, write_work = traced(lambda: _serialize(message))
    written = marker("serialize_payload") + marker("serialize", _tensor_count(message))
    return payload, build_work + write_work + written


def traced_decode(payload: bytes) -> tuple[dict[str, torch.Tensor], WorkProfile]:
    """:func:`decode_to_fp32` with its work: traced ops plus a marker per tensor read."""
    message, read_work = traced(lambda: _deserialize(payload))
    state, dequantize_work = traced(lambda: _message_state(message))
    read = marker("deserialize_payload") + marker("deserialize", _tensor_count(message))
    return state, read_work + dequantize_work + read
