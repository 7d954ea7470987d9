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
from typing import ClassVar, Literal

from pydantic import model_validator

from fedhq_sim.errors import InputError
from fedhq_sim.schema import (
    BitRate,
    ByteRate,
    ByteSize,
    Fraction,
    NonNegativeSeconds,
    OpsRate,
    Seconds,
    StrictModel,
    validate,
)
from fedhq_sim.yamlio import load_yaml_mapping

SOURCE_TAGS = ("[R]", "[M]", "[I]")


class _Sourced(StrictModel):
    """A profile whose numeric keys each need a source string."""

    numeric_keys: ClassVar[tuple[str, ...]] = ()
    sources: dict[str, str]

    @model_validator(mode="after")
    def _every_number_has_a_source(self) -> _Sourced:
        needed = self.numeric_keys
        for key in needed:
            if key not in self.sources:
                raise ValueError(f"sources: missing a source for '{key}' (start it with [R], [M] or [I])")
            if not self.sources[key].strip().startswith(SOURCE_TAGS):
                raise ValueError(f"sources.{key}: must start with [R], [M] or [I] to say how it is known")
        unknown = sorted(set(self.sources) - set(needed))
        if unknown:
            raise ValueError(f"sources: '{unknown[0]}' is not a numeric key of this profile")
        return self


class ComputeThroughput(StrictModel):
    """Sustained effective throughput per precision (operations per second)."""

    fp32: OpsRate
    int8: OpsRate


class DeviceProfile(_Sourced):
    """A device class: how fast it computes per precision and moves memory."""

    numeric_keys: ClassVar[tuple[str, ...]] = (
        "compute.fp32",
        "compute.int8",
        "memory_bandwidth",
        "memory",
        "op_overhead",
    )
    kind: Literal["device"]
    name: str
    description: str
    compute: ComputeThroughput
    memory_bandwidth: ByteRate
    memory: ByteSize
    op_overhead: Seconds


class LinkProfile(_Sourced):
    """A link class: capacity per direction, one-way latency, jitter and residual loss.

    ``uplink`` is the direction toward the server, ``downlink`` the direction away from it.
    """

    numeric_keys: ClassVar[tuple[str, ...]] = ("downlink", "uplink", "latency", "jitter", "loss")
    kind: Literal["link"]
    name: str
    description: str
    downlink: BitRate
    uplink: BitRate
    latency: NonNegativeSeconds
    jitter: NonNegativeSeconds
    loss: Fraction


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
