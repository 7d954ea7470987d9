"""Device and link profiles: what a class of hardware or link can do, with sources.

A profile is one YAML file under ``device_profiles/devices/`` or ``device_profiles/links/``;
its ``name`` equals the file stem. Every number carries a unit and a ``sources`` entry keyed
by its key path, which starts with ``[R]`` (read in a public source), ``[M]`` (measured) or
``[I]`` (an estimate, with its reasoning): a planner must be able to see where a figure
came from before trusting a simulated round latency built on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, PositiveInt, model_validator

from fedhq_sim.errors import InputError
from fedhq_sim.schema import (
    BitRate,
    ByteRate,
    ByteSize,
    DutyCycle,
    Fraction,
    NonNegativeByteSize,
    NonNegativeSeconds,
    OpsRate,
    Seconds,
    StrictModel,
    Watts,
    validate,
)
from fedhq_sim.yamlio import load_yaml_mapping

SOURCE_TAGS = ("[R]", "[M]", "[I]")


def numeric_keys(model: BaseModel, prefix: str = "") -> list[str]:
    """Dotted paths of the numbers a profile states (keys left at their default are not stated)."""
    keys: list[str] = []
    for name in type(model).model_fields:
        if name not in model.model_fields_set:
            continue
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            keys += numeric_keys(value, f"{prefix}{name}.")
        elif isinstance(value, (float, int)) and not isinstance(value, bool):
            keys.append(f"{prefix}{name}")
    return keys


class _Sourced(StrictModel):
    """A profile whose every stated number needs a source string."""

    sources: dict[str, str]

    @model_validator(mode="after")
    def _every_number_has_a_source(self) -> _Sourced:
        needed = numeric_keys(self)
        for key in needed:
            if key not in self.sources:
                raise ValueError(f"sources: missing a source for '{key}' (start it with [R], [M] or [I])")
            if not self.sources[key].strip().startswith(SOURCE_TAGS):
                raise ValueError(f"sources.{key}: must start with [R], [M] or [I] to say how it is known")
        unknown = sorted(set(self.sources) - set(needed))
        if unknown:
            raise ValueError(f"sources: '{unknown[0]}' is not a numeric key of this profile")
        return self


class Kernel(StrictModel):
    """One kernel class: a fixed cost per call and the sustained throughput beyond it."""

    overhead: Seconds
    throughput: OpsRate


class Kernels(StrictModel):
    """Kernel classes per precision (see :data:`fedhq_sim.work.OpKind`).

    fp32: ``matmul``, ``conv``, ``conv_backward``, ``norm`` and ``norm_backward`` (batch, layer
    and group normalization), ``max_pool`` (forward; its backward is elementwise) and
    ``elementwise`` (which also prices reductions, copies and the int8 quantize/dequantize
    steps); fake quantization runs on the
    fp32 units as ``fake_quant``; int8: ``int8_matmul`` and ``int8_conv``. ``fp16_matmul`` and
    ``fp16_conv`` are stated only where the hardware has fp16 units; without them fp16 work is
    priced at the fp32 rate.
    """

    matmul: Kernel
    conv: Kernel
    conv_backward: Kernel
    norm: Kernel
    norm_backward: Kernel
    max_pool: Kernel
    elementwise: Kernel
    fake_quant: Kernel
    int8_matmul: Kernel
    int8_conv: Kernel
    fp16_matmul: Kernel | None = None
    fp16_conv: Kernel | None = None


class Overheads(StrictModel):
    """Costs that are not one tensor operation's: dispatch, step bookkeeping, module rewriting.

    ``dispatch`` is what a view (an op that moves no data) costs. ``train_step`` is the
    framework's bookkeeping per training step beyond its operations (loss, backward launch,
    optimizer loop) and ``train_op`` its extra per operation recorded for autograd;
    ``qat_op`` is what each operation of a fake-quantized (QAT) training step costs beyond
    that (its quantizers' Python range bookkeeping).
    ``warmup_model`` and ``warmup_op`` are what a freshly built model's first training steps
    cost beyond later ones (state created on first use: autograd and optimizer bookkeeping,
    allocator blocks, kernel library primitives), once per round: ``warmup_model`` once, and
    ``warmup_op`` per operation of one step.
    ``round_fixed`` is what a client's round of local work costs once beyond its parts (its
    one-off code paths, reading and writing a model, run cold after training or other work).
    ``build_module`` is per module constructed, ``load_tensor`` per tensor loaded into a
    model, ``serialize`` and ``deserialize`` per tensor written to or read from a payload, and
    ``serialize_payload``/``deserialize_payload`` once per payload (archive set-up).
    ``prepare_ptq``, ``prepare_qat`` and ``convert`` are per module of the model, for copying,
    fusing and swapping modules.
    """

    dispatch: Seconds
    train_step: Seconds
    train_op: Seconds
    qat_op: Seconds
    warmup_op: Seconds
    warmup_model: Seconds
    round_fixed: Seconds
    build_module: Seconds
    load_tensor: Seconds
    serialize: Seconds
    serialize_payload: Seconds
    deserialize: Seconds
    deserialize_payload: Seconds
    prepare_ptq: Seconds
    prepare_qat: Seconds
    convert: Seconds


class DevicePower(StrictModel):
    """Electrical power of the whole device when idle and when computing."""

    idle: Watts
    active: Watts

    @model_validator(mode="after")
    def _active_at_least_idle(self) -> DevicePower:
        if self.active < self.idle:
            raise ValueError(f"power.active ({self.active} W) must not be below power.idle ({self.idle} W)")
        return self


class DeviceProfile(_Sourced):
    """A device class: its kernels' costs, memory, framework overheads and power."""

    kind: Literal["device"]
    name: str
    description: str
    kernels: Kernels
    memory_bandwidth: ByteRate
    memory: ByteSize
    memory_reserved: NonNegativeByteSize
    overheads: Overheads
    power: DevicePower
    conv_channel_block: PositiveInt = 1
    """Channels the fp32 convolution kernels compute at once (the vector width in fp32 lanes
    on CPUs: 16 with AVX-512, 8 with AVX2, 4 with 128-bit NEON); a convolution is priced on
    its channels rounded up to it (:func:`fedhq_sim.charge.padded_flops`). 1, the default,
    prices the channels as they are."""

    @model_validator(mode="after")
    def _reserve_below_memory(self) -> DeviceProfile:
        if self.memory_reserved >= self.memory:
            raise ValueError("memory_reserved must be less than memory (it is the OS and runtime's share)")
        return self

    @property
    def memory_available(self) -> float:
        """Bytes the federated-learning work may use."""
        return self.memory - self.memory_reserved


class RadioPower(StrictModel):
    """Power the network interface draws while sending and while receiving."""

    transmit: Watts
    receive: Watts


class LinkProfile(_Sourced):
    """A link class: capacity per direction, one-way latency, jitter, residual loss, duty cycle.

    ``uplink`` is the direction toward the server, ``downlink`` the direction away from it.
    ``duty_cycle`` is the share of time a sender may occupy the channel (regulated on
    LoRaWAN's sub-GHz bands); it scales both capacities. ``radio_power`` is what the
    client's interface draws while its transfer is on the link (the PHY, on wired links).
    """

    kind: Literal["link"]
    name: str
    description: str
    downlink: BitRate
    uplink: BitRate
    latency: NonNegativeSeconds
    jitter: NonNegativeSeconds
    loss: Fraction
    duty_cycle: DutyCycle = 1.0
    radio_power: RadioPower

    @property
    def effective_downlink(self) -> float:
        return self.downlink * self.duty_cycle

    @property
    def effective_uplink(self) -> float:
        return self.uplink * self.duty_cycle


_KINDS: dict[str, type[DeviceProfile] | type[LinkProfile]] = {
    "devices": DeviceProfile,
    "links": LinkProfile,
}


@dataclass
class ProfileLibrary:
    """Profiles under one directory, loaded on first use and validated strictly."""

    root: Path
    _cache: dict[tuple[str, str], DeviceProfile | LinkProfile] = field(default_factory=dict)

    def available(self, folder: str) -> list[str]:
        return sorted(p.stem for p in (self.root / folder).glob("*.yaml"))

    def _load(self, folder: str, name: str, referenced_from: Path, key: str):
        cached = self._cache.get((folder, name))
        if cached is not None:
            return cached
        path = self.root / folder / f"{name}.yaml"
        if not path.is_file():
            names = ", ".join(self.available(folder)) or f"none found in {self.root / folder}"
            raise InputError(referenced_from, key, f"unknown {folder[:-1]} profile '{name}' (available: {names})")
        profile = validate(_KINDS[folder], load_yaml_mapping(path), path)
        if profile.name != name:
            raise InputError(path, "name", f"must equal the file name '{name}', got '{profile.name}'")
        self._cache[(folder, name)] = profile
        return profile

    def device(self, name: str, *, referenced_from: Path, key: str) -> DeviceProfile:
        """The device profile ``name``; an unknown name is an error at ``key`` of the referrer."""
        return self._load("devices", name, referenced_from, key)

    def link(self, name: str, *, referenced_from: Path, key: str) -> LinkProfile:
        """The link profile ``name``; an unknown name is an error at ``key`` of the referrer."""
        return self._load("links", name, referenced_from, key)
