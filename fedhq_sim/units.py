"""Strict parsing of quantities with units, such as ``"100 Mbit/s"`` or ``"15 ms"``.

Profiles and scenarios state every physical number with its unit, so a reader never has to
guess whether a bandwidth is in bits or bytes. Each parser returns the value in SI base units
(seconds, bits per second, bytes, FLOP/s, bytes per second) and raises :class:`ValueError`
with a message that shows an accepted example; the schema layer adds the file and key path.
"""

from __future__ import annotations

import math
import re

_NUMBER_UNIT = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z/%]+)\s*$")

_DECIMAL = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_BINARY = {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40}


def _split(text: object, kind: str, example: str) -> tuple[float, str]:
    if isinstance(text, bool) or not isinstance(text, str):
        raise ValueError(f"expected a {kind} with a unit as a string, like '{example}', got {text!r}")
    match = _NUMBER_UNIT.match(text)
    if match is None:
        raise ValueError(f"expected a {kind} like '{example}', got {text!r}")
    value = float(match.group(1))
    if not math.isfinite(value):
        raise ValueError(f"expected a finite {kind}, got {text!r}")
    return value, match.group(2)


def _scaled(text: object, kind: str, example: str, units: dict[str, float]) -> float:
    value, unit = _split(text, kind, example)
    if unit not in units:
        accepted = ", ".join(sorted(units))
        raise ValueError(f"unknown {kind} unit {unit!r} in {text!r}; use one of: {accepted}")
    scaled = value * units[unit]
    if not math.isfinite(scaled):
        raise ValueError(f"expected a finite {kind}, got {text!r}")
    return scaled


def _prefixed(base_units: dict[str, float], prefixes: dict[str, float]) -> dict[str, float]:
    return {p + u: scale * factor for u, factor in base_units.items() for p, scale in prefixes.items()}


_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}
_RATE_UNITS = _prefixed({"bit/s": 1.0, "B/s": 8.0}, _DECIMAL)
_BYTE_RATE_UNITS = _prefixed({"B/s": 1.0}, _DECIMAL)
_SIZE_UNITS = {**_prefixed({"B": 1.0}, _DECIMAL), **_prefixed({"B": 1.0}, _BINARY)}
_FLOPS_UNITS = _prefixed({"FLOP/s": 1.0, "OP/s": 1.0}, _DECIMAL)
_POWER_UNITS = {"mW": 1e-3, "W": 1.0, "kW": 1e3}


def parse_duration_s(text: object) -> float:
    """``"15 ms"`` -> 0.015 (seconds)."""
    return _scaled(text, "duration", "15 ms", _TIME_UNITS)


def parse_bit_rate_bps(text: object) -> float:
    """``"100 Mbit/s"`` -> 1e8 (bits per second); ``"8 MB/s"`` -> 6.4e7."""
    return _scaled(text, "bit rate", "100 Mbit/s", _RATE_UNITS)


def parse_byte_rate_Bps(text: object) -> float:  # noqa: N802 - B (bytes) vs b (bits) matters here
    """``"8 GB/s"`` -> 8e9 (bytes per second); memory bandwidth is quoted in bytes."""
    return _scaled(text, "memory bandwidth", "8 GB/s", _BYTE_RATE_UNITS)


def parse_size_bytes(text: object) -> float:
    """``"4 GiB"`` -> 4294967296.0; ``"512 kB"`` -> 512000.0."""
    return _scaled(text, "size", "4 GiB", _SIZE_UNITS)


def parse_throughput_ops(text: object) -> float:
    """``"48 GFLOP/s"`` -> 4.8e10 operations per second (``OP/s`` for integer work)."""
    return _scaled(text, "throughput", "48 GFLOP/s", _FLOPS_UNITS)


def parse_power_w(text: object) -> float:
    """``"6.4 W"`` -> 6.4 (watts); ``"120 mW"`` -> 0.12."""
    return _scaled(text, "power", "6.4 W", _POWER_UNITS)


def parse_fraction(text: object) -> float:
    """``"0.5 %"`` -> 0.005; a bare number is taken as a fraction and must lie in [0, 1)."""
    if isinstance(text, bool):
        raise ValueError(f"expected a fraction like '0.5 %' or 0.005, got {text!r}")
    is_number = isinstance(text, (int, float))
    value = float(text) if is_number else _scaled(text, "fraction", "0.5 %", {"%": 0.01})
    if not (0.0 <= value < 1.0):
        raise ValueError(f"expected a fraction in [0, 1) (e.g. '0.5 %'), got {text!r}")
    return value
