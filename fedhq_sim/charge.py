"""Charging: simulated seconds for a work profile on a device profile.

Each operation costs the larger of its compute time (FLOPs over the device's throughput at
that precision) and its memory time (bytes over memory bandwidth), the roofline model, plus
the device's fixed per-operation overhead. Fake quantization runs on the fp32 units, as it
does in PyTorch. The charge depends only on the work and the device, never on the host.
"""

from __future__ import annotations

from fedhq_sim.profiles import DeviceProfile
from fedhq_sim.work import OpCost, WorkProfile


def op_seconds(op: OpCost, device: DeviceProfile) -> float:
    """Roofline time of one operation on ``device``, overhead included."""
    throughput = device.compute.int8 if op.precision == "int8" else device.compute.fp32
    return max(op.flops / throughput, op.nbytes / device.memory_bandwidth) + device.op_overhead


def charge_seconds(work: WorkProfile, device: DeviceProfile) -> float:
    """Simulated seconds ``device`` needs for ``work`` (summed in a fixed order)."""
    return sum(count * op_seconds(op, device) for op, count in sorted(work.counts.items()))
