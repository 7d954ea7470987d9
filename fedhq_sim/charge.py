"""Charging: simulated seconds and joules for a work profile on a device profile.

Each operation costs its kernel class's fixed overhead plus the larger of its compute time
(FLOPs over the class's throughput) and its memory time (bytes over memory bandwidth): the
roofline model with a per-call intercept, which is what small-model work on real devices
looks like (a tiny convolution costs its overhead, a large one its FLOPs). Views cost one
dispatch; markers (training steps, rewritten modules) cost the device's stated overhead
each. Energy is the device's active power times that time (a transfer's, its interface's radio
power times its time on the link). The charge depends only on the
work and the device, never on the host.
"""

from __future__ import annotations

from fedhq_sim.profiles import DeviceProfile, Kernel, LinkProfile
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


def _padded(channels: int, block: int) -> int:
    return -(-channels // block) * block


def padded_flops(op: OpCost, block: int) -> float:
    """The FLOPs an fp32 convolution costs on kernels that block channels by ``block``.

    Vectorized convolution kernels (oneDNN's on x86: 16 fp32 lanes with AVX-512, 8 with
    AVX2) lay channels out in blocks of the vector width and compute whole blocks, so a
    layer of 24 channels costs what one of 32 does (measured here: a 3x3 convolution of 20,
    24 or 32 channels takes the same time, 40 or 48 the same). Output channels always
    round up; input channels do where they fill a block or more, or where the backward
    pass computes the input's gradient (whose output they are); a network's first layer
    (1 or 3 channels) runs a kernel that does not block them. A depthwise convolution
    rounds up its channels once; other grouped convolutions are counted as they are.
    """
    if block <= 1 or not op.channels or op.precision != "fp32":
        return op.flops
    cin, cout, groups, grad_input = op.channels
    if groups == 1:
        in_factor = _padded(cin, block) / cin if cin >= block or grad_input else 1.0
        return op.flops * in_factor * _padded(cout, block) / cout
    if groups == cin == cout:
        return op.flops * _padded(cin, block) / cin
    return op.flops


def kernel_terms(op: OpCost, device: DeviceProfile) -> tuple[float, float]:
    """A kernel operation's two terms on ``device``: its per-call intercept, and the larger of
    its compute and memory times (the in-situ calibration scales them apart)."""
    kernel = kernel_for(op, device)
    flops = padded_flops(op, device.conv_channel_block)
    return kernel.overhead, max(flops / kernel.throughput, op.nbytes / device.memory_bandwidth)


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


def idle_joules(seconds: float, device: DeviceProfile) -> float:
    """Energy of ``seconds`` in a round without computing: the device's idle power times the time."""
    return device.power.idle * seconds


def phase_joules(phase: str, status: str, seconds: float, device: DeviceProfile, link: LinkProfile) -> float:
    """Energy of one phase of a client's round: computation at the device's active power (none
    when it could not start: ``unable``), a transfer at its interface's receive (download)
    or transmit (upload) power for as long as the transfer was on the link."""
    if phase == "compute":
        return compute_joules(seconds, device) if status != "unable" else 0.0
    power = link.radio_power
    return (power.receive if phase == "download" else power.transmit) * seconds
