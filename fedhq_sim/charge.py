"""Charging: simulated seconds and joules for a work profile on a device profile.

Each operation costs its kernel class's fixed overhead plus the larger of its compute time
(FLOPs over the class's throughput) and its memory time (bytes over memory bandwidth): the
roofline model with a per-call intercept, which is what small-model work on real devices
looks like (a tiny convolution costs its overhead, a large one its FLOPs). Views cost one
dispatch; markers (training steps, rewritten modules) cost the device's stated overhead
each. Energy is the device's active power times that time. The charge depends only on the
work and the device, never on the host.
"""

from __future__ import annotations

from fedhq_sim.profiles import DeviceProfile, Kernel
from fedhq_sim.work import OpCost, WorkProfile

_FP16_KERNELS = {"matmul": "fp16_matmul", "conv": "fp16_conv"}


def kernel_for(op: OpCost, device: DeviceProfile) -> Kernel:
    """The kernel class that prices ``op``; fp16 dense work uses fp16 units where there are any."""
    kernels = device.kernels
    if op.precision == "fp16" and op.kind in _FP16_KERNELS:
        fp16 = getattr(kernels, _FP16_KERNELS[op.kind])
        if fp16 is not None:
            return fp16
    return getattr(kernels, op.kind)


def kernel_terms(op: OpCost, device: DeviceProfile) -> tuple[float, float]:
    """A kernel operation's two terms on ``device``: its per-call intercept, and the larger of
    its compute and memory times (the in-situ calibration scales them apart)."""
    kernel = kernel_for(op, device)
    return kernel.overhead, max(op.flops / kernel.throughput, op.nbytes / device.memory_bandwidth)


def op_seconds(op: OpCost, device: DeviceProfile) -> float:
    """Time of one operation on ``device``, overhead included."""
    if op.kind == "view":
        return device.overheads.dispatch
    if op.kind == "marker":
        return getattr(device.overheads, op.op.removeprefix("sim."))
    return sum(kernel_terms(op, device))


def charge_seconds(work: WorkProfile, device: DeviceProfile) -> float:
    """Simulated seconds ``device`` needs for ``work``.

    Summed in a fixed (sorted) order, so equal profiles built in different orders charge
    bit-identical seconds; a profile charged on the same device again is a lookup, which
    keeps a fleet of thousands of clients sharing a few profiles cheap.
    """
    known = work.prices.get(id(device))
    if known is not None and known[0] is device:
        return known[1]
    seconds = sum(count * op_seconds(op, device) for op, count in sorted(work.counts.items()))
    work.prices[id(device)] = (device, seconds)
    return seconds


def compute_joules(seconds: float, device: DeviceProfile) -> float:
    """Energy of ``seconds`` of computation: the device's active power times the time."""
    return device.power.active * seconds
