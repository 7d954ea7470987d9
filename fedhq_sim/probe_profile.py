"""A measured device profile as the library writes it: numbers, units and ``[M]`` sources.

The device probe (:mod:`fedhq_sim.probe`) measures; this module says what was measured and
how, in the YAML format every library profile uses, and checks that the result loads like
one. Kept apart so that the measuring code stays about measuring.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Any

import torch

from fedhq_sim.in_situ import STEPS, InSitu
from fedhq_sim.profiles import DeviceProfile, Kernels, Overheads
from fedhq_sim.schema import validate


def host_memory() -> tuple[float, float]:
    """Installed memory and the share already taken (OS, other processes, this runtime)."""
    total = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    available = total
    meminfo = "/proc/meminfo"
    if os.path.exists(meminfo):
        with open(meminfo, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = float(line.split()[1]) * 1024
    return total, total - available


FP32_LANES = {"AVX512": 16, "AVX2": 8, "SVE256": 8}
"""fp32 lanes of the vector ISA PyTorch dispatches to, by ``torch.backends.cpu.get_cpu_capability()``;
any other (NEON, SSE, VSX, ZVECTOR: 128-bit vectors) has 4."""


def host_channel_block() -> tuple[int, str]:
    """The convolution kernels' channel block on this host, and how it is known.

    Read from the vector ISA rather than timed: a timing of 24 against 32 channels would tell
    the same on a quiet host, but on a noisy one it can misread a 1.8x step. The capability
    is PyTorch's own dispatch level (``ATEN_CPU_CAPABILITY`` can lower it; oneDNN detects its
    ISA itself, ``ONEDNN_MAX_CPU_ISA``), so a host run with either set may block otherwise.
    """
    capability = torch.backends.cpu.get_cpu_capability()
    lanes = FP32_LANES.get(capability, 4)
    return lanes, (
        f"[M] vector ISA PyTorch dispatches to on this host (torch.backends.cpu.get_cpu_capability() = "
        f"{capability}): {lanes} fp32 lanes, the channel block of its convolution kernels"
    )


@dataclass(frozen=True)
class ProbeSettings:
    """What ``profile-device`` was asked for; recorded in the profile's sources."""

    name: str
    threads: int
    repeats: int
    power_idle_w: float | None
    power_active_w: float | None
    passes: int = 3


def _quantity(value: float, unit: str) -> str:
    return f"{value:.6g} {unit}"


def profile_mapping(
    settings: ProbeSettings,
    kernels: Kernels,
    bandwidth: float,
    overheads: Overheads,
    memory: float,
    reserved: float,
    factors: InSitu,
) -> dict[str, Any]:
    """The measured numbers in the library's YAML format, each with its ``[M]`` source."""
    how = (
        f"[M] fedhq-sim profile-device on this host ({platform.machine()}, {settings.threads} thread(s), "
        f"torch {torch.__version__}, mean of {settings.repeats} interleaved timed loops without the slowest, "
        f"median of {settings.passes} passes; "
        f"in-situ factors x{factors.conv_factor:.3f} convolution/normalization intercepts, "
        f"x{factors.conv_compute_factor:.3f} their compute, x{factors.rest_factor:.3f} the rest, "
        f"x{factors.round_factor:.3f} once-per-round overheads"
    )
    sources: dict[str, str] = {}
    kernel_map: dict[str, Any] = {}
    for name, kernel in kernels:
        if kernel is None:
            continue
        unit = "GOP/s" if name.startswith("int8") else "GFLOP/s"
        kernel_map[name] = {
            "overhead": _quantity(kernel.overhead * 1e6, "us"),
            "throughput": _quantity(kernel.throughput / 1e9, unit),
        }
        sources[f"kernels.{name}.overhead"] = f"{how}; intercept of a relative-error line fit over a size sweep)"
        sources[f"kernels.{name}.throughput"] = f"{how}; inverse slope of the same fit)"
    sources["memory_bandwidth"] = f"{how}; copy of a 64 MiB tensor, read plus write bytes)"
    block, sources["conv_channel_block"] = host_channel_block()
    sources["memory"] = "[M] installed memory reported by the OS (sysconf)"
    sources["memory_reserved"] = "[M] memory in use when profiled (MemTotal - MemAvailable): OS, runtime, others"
    sources["overheads.dispatch"] = f"{how}; a view, which moves no data)"
    sources["overheads.train_step"] = (
        f"{how}; intercept of training-step wall time minus charged operations over operations per step)"
    )
    sources["overheads.train_op"] = f"{how}; slope of the same fit)"
    sources["overheads.qat_op"] = (
        f"{how}; fake-quantized chains' training-step wall time minus charged operations and that fit, "
        "per operation, median over depths)"
    )
    sources["overheads.warmup_model"] = (
        f"{how}; a fresh probe network's first {STEPS} training steps minus its next {STEPS}: intercept of a "
        "Theil-Sen line over operations per step)"
    )
    sources["overheads.warmup_op"] = f"{how}; slope of the same line)"
    sources["overheads.round_fixed"] = (
        f"{how}; probe clients' read, build and write wall time minus charged operations: intercept of a Theil-Sen "
        "line over their overheads' charge, whose slope is the once-per-round factor)"
    )
    for name, unit in (("build_module", "module"), ("load_tensor", "tensor")):
        sources[f"overheads.{name}"] = f"{how}; wall time minus charged operations, per {unit})"
    for name in ("serialize", "deserialize"):
        sources[f"overheads.{name}"] = f"{how}; slope of wall time minus charged operations over tensors per payload)"
        sources[f"overheads.{name}_payload"] = f"{how}; intercept of the same fit)"
    for name in ("prepare_ptq", "prepare_qat", "convert"):
        sources[f"overheads.{name}"] = f"{how}; wall time minus charged operations, per module)"
    power: dict[str, str] = {}
    for key, value in (("idle", settings.power_idle_w), ("active", settings.power_active_w)):
        if value is None:
            value = 10.0 if key == "active" else 5.0
            sources[f"power.{key}"] = (
                "[I] placeholder: power cannot be measured from software; rerun with --power-idle and "
                "--power-active from a power meter or the datasheet"
            )
        else:
            sources[f"power.{key}"] = "[R] given to profile-device by the planner (meter or datasheet)"
        power[key] = _quantity(value, "W")
    return {
        "kind": "device",
        "name": settings.name,
        "description": f"Measured by fedhq-sim profile-device: {platform.processor() or platform.machine()}, "
        f"{settings.threads} thread(s)",
        "kernels": kernel_map,
        "memory_bandwidth": _quantity(bandwidth / 1e9, "GB/s"),
        "memory": _quantity(memory / 2**30, "GiB"),
        "memory_reserved": _quantity(reserved / 2**30, "GiB"),
        "overheads": {name: _quantity(getattr(overheads, name) * 1e6, "us") for name in Overheads.model_fields},
        "power": power,
        "conv_channel_block": block,
        "sources": sources,
    }


def parse_measured(mapping: dict[str, Any]) -> DeviceProfile:
    """Validate a measured mapping as a device profile (it must pass like any library file)."""
    return validate(DeviceProfile, mapping, "profile-device")
