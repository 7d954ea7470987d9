"""The wire format of model updates, and the server's dequantization.

An fp32 update is the model's ``state_dict`` (and, when the clients' updates set the
deployment's activation ranges, the input range of each layer the deployment quantizes,
observed on the client's calibration samples). A quantized update carries, per quantized
layer, its integer weight values as plain ``torch.int8`` tensors (at 4 bits, two values a
byte in a ``uint8`` tensor) with per-channel scales, its fp32 bias and its input range, and every
other tensor in fp32 (batch norm stays unfolded; :mod:`fedhq_sim.quant.backend` says why).
Both are serialized with ``torch.save`` and read back with
``torch.load(weights_only=True)``, and the payload's length is what the network carries.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from fedhq_sim.quant import backend
from fedhq_sim.quant.ranges import LayerRanges, grid_range
from fedhq_sim.work import WorkProfile, marker, traced


def _serialize(obj: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _deserialize(payload: bytes) -> dict:
    return torch.load(io.BytesIO(payload), weights_only=True)


def fp32_message(state: dict[str, torch.Tensor], ranges: LayerRanges | None = None) -> dict:
    """The message of an fp32 update: the ``state_dict`` (parameters and buffers), copied, and
    the layers' input ranges when given."""
    message = {"format": "fp32", "state": {k: v.detach().clone() for k, v in state.items()}}
    if ranges is not None:
        message["ranges"] = {name: r.clone() for name, r in ranges.items()}
    return message


def encode_fp32(state: dict[str, torch.Tensor], ranges: LayerRanges | None = None) -> bytes:
    """Serialize an fp32 ``state_dict`` (parameters and buffers), with input ranges if given."""
    return _serialize(fp32_message(state, ranges))


def quantized_message(model: nn.Module, bits: int) -> dict:
    """The message of a converted model: per quantized layer its integer weights (packed two
    per byte at 4 bits), per-channel scales (symmetric: no zero points), fp32 bias and input
    range (the scale and zero point the client calibrated or learned, which a deployment
    from what clients send needs); every other tensor of its ``state_dict`` (batch norm,
    other layers) in fp32."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    covered: set[str] = set()
    for name, layer in backend.quantized_layers(model).items():
        values = layer.weight_int
        layers[name] = {
            "weight_int": pack_nibbles(values) if bits == 4 else values.clone(),
            "weight_shape": torch.tensor(values.shape),
            "scales": layer.weight_scale.to(torch.float32).clone(),
            "bias": layer.bias.detach().clone() if layer.bias is not None else torch.empty(0),
            "in_scale": layer.input_quantizer.scale.detach().clone(),
            "in_zero_point": layer.input_quantizer.zero_point.detach().clone(),
        }
        covered |= {f"{name}.weight", f"{name}.bias"}
    rest = {k: v.detach().clone() for k, v in model.state_dict().items() if k not in covered}
    return {"format": "quantized", "bits": bits, "layers": layers, "float": rest}


def encode_quantized(model: nn.Module, bits: int) -> bytes:
    """Serialize a converted model (see :func:`quantized_message`)."""
    return _serialize(quantized_message(model, bits))


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
    """Symmetric per-output-channel weights: integer value times its channel's scale."""
    shape = torch.Size(layer["weight_shape"].tolist())
    values = unpack_nibbles(layer["weight_int"], shape) if bits == 4 else layer["weight_int"]
    return values.to(torch.float32) * layer["scales"].view(-1, *([1] * (len(shape) - 1)))


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
    return state | message["float"]


def message_ranges(message: dict) -> LayerRanges | None:
    """The input ranges an update's message carries (``None``: an fp32 update without them).

    A quantized update's are the grids its client runs, recovered from the scale and zero point
    of each layer (:func:`~fedhq_sim.quant.ranges.grid_range`).
    """
    if message["format"] == "fp32":
        return message.get("ranges")
    grid = backend.Ranges.at(int(message["bits"]))
    return {
        name: grid_range(layer["in_scale"], layer["in_zero_point"], grid.act_min, grid.act_max)
        for name, layer in message["layers"].items()
    }


def _tensor_count(message: dict) -> int:
    return sum(isinstance(leaf, torch.Tensor) for leaf in tree_flatten(message)[0])


def traced_serialize(build_message: Callable[[], dict]) -> tuple[bytes, WorkProfile]:
    """Build a message (``fp32_message``/``quantized_message``) and serialize it, with the work:
    traced ops plus one marker per payload and one per tensor written."""
    message, build_work = traced(build_message)
    payload, write_work = traced(lambda: _serialize(message))
    written = marker("serialize_payload") + marker("serialize", _tensor_count(message))
    return payload, build_work + write_work + written


def decode_update(payload: bytes) -> tuple[dict[str, torch.Tensor], LayerRanges | None]:
    """The fp32 ``state_dict`` an update stands for, and the input ranges it carries."""
    message = _deserialize(payload)
    return _message_state(message), message_ranges(message)


def _traced_read(payload: bytes) -> tuple[dict, dict[str, torch.Tensor], WorkProfile]:
    """Deserialize and dequantize, with the work: traced ops plus a marker per tensor read."""
    message, read_work = traced(lambda: _deserialize(payload))
    state, dequantize_work = traced(lambda: _message_state(message))
    read = marker("deserialize_payload") + marker("deserialize", _tensor_count(message))
    return message, state, read_work + dequantize_work + read


def traced_decode(payload: bytes) -> tuple[dict[str, torch.Tensor], WorkProfile]:
    """:func:`decode_to_fp32` with its work."""
    _, state, work = _traced_read(payload)
    return state, work


def traced_decode_update(payload: bytes) -> tuple[dict[str, torch.Tensor], LayerRanges | None, WorkProfile]:
    """:func:`decode_update` with its work."""
    message, state, work = _traced_read(payload)
    ranges, ranges_work = traced(lambda: message_ranges(message))
    return state, ranges, work + ranges_work
