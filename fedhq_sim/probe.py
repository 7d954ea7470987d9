"""Measure the machine this runs on and express it as a device profile.

Every kernel class of :class:`~fedhq_sim.profiles.Kernels` is timed on synthetic tensors over
a sweep of sizes, and a line ``time = overhead + FLOPs / throughput`` is fitted to the
times (weighted by relative error, so small and large calls count alike; all measurements of
a pass are taken in turns, :mod:`fedhq_sim.timing`). The overheads
that are no single operation's (a training step's bookkeeping, module rewriting at prepare
and convert) are measured as residuals: the wall time of a synthetic workload minus what
its traced operations are charged, so nothing is counted twice. None of the workloads is
one of the simulator's models; the fidelity check (``bench/fidelity.py``) tests the fitted
profile on those.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F  # noqa: N812 - the conventional alias

from fedhq_sim.charge import charge_seconds, padded_flops
from fedhq_sim.in_situ import InSitu, apply_in_situ, in_situ
from fedhq_sim.probe_networks import ChainNet, ConvNet, step_fn
from fedhq_sim.probe_profile import ProbeSettings, host_channel_block, host_memory, parse_measured, profile_mapping
from fedhq_sim.profiles import DeviceProfile, Kernel, Kernels, Overheads
from fedhq_sim.quant import backend
from fedhq_sim.quant.payload import decode_to_fp32, encode_fp32
from fedhq_sim.timing import InterleavedTimer, Timing
from fedhq_sim.work import WorkProfile, traced


@dataclass(frozen=True)
class Sample:
    """One measured call: the work it executed (traced) and its timing (once the timer ran)."""

    work: WorkProfile
    timing: Timing

    @property
    def seconds(self) -> float:
        """Seconds per call."""
        return self.timing.seconds


def measure(fn: Callable[[], Any], timer: InterleavedTimer) -> Sample:
    """Trace ``fn`` once now; ``timer`` times it untraced when it runs."""
    _, work = traced(fn)
    return Sample(work, timer.loop(fn))


def fit_line(flops: Sequence[float], seconds: Sequence[float], *, relative: bool = True) -> tuple[float, float]:
    """``(overhead, throughput)`` of ``seconds ~ overhead + flops / throughput``.

    Least squares on relative error (each residual divided by its measurement), or on
    absolute error for residual times, which may be near zero. A negative intercept or
    slope is not physical, so each is clamped by refitting the other alone.
    """
    weights = [1.0 / t for t in seconds] if relative else [1.0] * len(seconds)
    s_ww = sum(w * w for w in weights)
    s_wwf = sum(w * w * f for w, f in zip(weights, flops, strict=True))
    s_wwff = sum(w * w * f * f for w, f in zip(weights, flops, strict=True))
    s_wwt = sum(w * w * t for w, t in zip(weights, seconds, strict=True))
    s_wwft = sum(w * w * f * t for w, f, t in zip(weights, flops, seconds, strict=True))
    det = s_ww * s_wwff - s_wwf * s_wwf
    overhead = (s_wwff * s_wwt - s_wwf * s_wwft) / det if det else 0.0
    per_flop = (s_ww * s_wwft - s_wwf * s_wwt) / det if det else 0.0
    if per_flop <= 0:
        return max(s_wwt / s_ww, 0.0), float("inf")
    if overhead <= 0:
        per_flop = s_wwft / s_wwff
        overhead = max(min(seconds), 0.0) * 1e-3
    return overhead, 1.0 / per_flop


def _target_flops(sample: Sample, kind: str) -> float:
    """The FLOPs a sample's kernels of ``kind`` cost, channels padded as the charge pads them
    (the sweep's sizes fill whole channel blocks, so this changes nothing on today's ISAs)."""
    block, _ = host_channel_block()
    return sum(count * padded_flops(op, block) for op, count in sample.work.counts.items() if op.kind == kind)


def fit_kernel(samples: Sequence[Sample], kind: str) -> Kernel:
    overhead, throughput = fit_line([_target_flops(s, kind) for s in samples], [s.seconds for s in samples])
    if throughput == float("inf"):
        largest = max(samples, key=lambda s: _target_flops(s, kind))
        throughput = _target_flops(largest, kind) / largest.seconds
    return Kernel.model_construct(overhead=overhead, throughput=throughput)


# Sizes: (batch, in_channels, height/width, out_channels, stride, kernel) for convolutions
# and (rows, in_features, out_features) for matmuls: the range of small edge models, from
# single-channel inputs and 1x1 shortcuts (overhead-bound) to compute-bound layers.
CONV_SIZES = (
    (8, 1, 8, 16, 1, 3),
    (32, 1, 16, 16, 1, 3),
    (16, 16, 8, 16, 1, 3),
    (32, 16, 8, 32, 2, 3),
    (32, 32, 4, 64, 2, 1),
    (64, 32, 8, 32, 1, 3),
    (64, 64, 4, 64, 1, 3),
    (16, 64, 16, 64, 1, 3),
)
NORM_SIZES = ((8, 16, 8), (32, 16, 8), (32, 64, 4), (64, 32, 16), (128, 64, 16))
MATMUL_SIZES = ((4, 16, 16), (16, 64, 64), (64, 128, 128), (64, 256, 256), (256, 256, 512))
ELEMENTWISE_SIZES = (16, 1024, 16_384, 262_144, 1_048_576)


def _matmul_samples(timer: InterleavedTimer, dtype: torch.dtype = torch.float32) -> list[Sample]:
    samples = []
    for rows, k, m in MATMUL_SIZES:
        x, w, b = torch.randn(rows, k, dtype=dtype), torch.randn(m, k, dtype=dtype), torch.randn(m, dtype=dtype)
        samples.append(measure(lambda x=x, w=w, b=b: F.linear(x, w, b), timer))
    return samples


def _conv_inputs(size: tuple[int, ...], dtype: torch.dtype = torch.float32):
    batch, cin, hw, cout, stride, k = size
    x, w = torch.randn(batch, cin, hw, hw, dtype=dtype), torch.randn(cout, cin, k, k, dtype=dtype)
    return x, w, stride, k // 2


def _conv_samples(timer: InterleavedTimer, dtype: torch.dtype = torch.float32) -> list[Sample]:
    samples = []
    for size in CONV_SIZES:
        x, w, stride, pad = _conv_inputs(size, dtype)
        samples.append(measure(lambda x=x, w=w, s=stride, p=pad: F.conv2d(x, w, stride=s, padding=p), timer))
    return samples


def _conv_backward_samples(timer: InterleavedTimer) -> list[Sample]:
    samples = []
    for size in CONV_SIZES:
        x, w, stride, pad = _conv_inputs(size)
        grad = torch.randn_like(F.conv2d(x, w, stride=stride, padding=pad))

        # A network's first convolution needs no input gradient; the others do.
        mask = [x.shape[1] > 1, True, True]

        def backward(x=x, w=w, grad=grad, s=stride, p=pad, mask=mask):
            return torch.ops.aten.convolution_backward(
                grad, x, w, [w.shape[0]], [s, s], [p, p], [1, 1], False, [0, 0], 1, mask
            )

        samples.append(measure(backward, timer))
    return samples


def _norm_samples(timer: InterleavedTimer) -> tuple[list[Sample], list[Sample]]:
    """Training-mode batch norm, forward and backward, over a size sweep."""
    forward, backward = [], []
    for batch, channels, hw in NORM_SIZES:
        x = torch.randn(batch, channels, hw, hw)
        weight, bias = torch.ones(channels), torch.zeros(channels)
        mean, var = torch.zeros(channels), torch.ones(channels)
        out, save_mean, save_invstd = torch.ops.aten.native_batch_norm(x, weight, bias, mean, var, True, 0.1, 1e-5)
        forward.append(measure(lambda x=x, w=weight, b=bias, m=mean, v=var: F.batch_norm(x, m, v, w, b, True), timer))
        grad = torch.randn_like(out)

        def norm_backward(x=x, g=grad, w=weight, m=mean, v=var, sm=save_mean, si=save_invstd):
            return torch.ops.aten.native_batch_norm_backward(g, x, w, m, v, sm, si, True, 1e-5, [True, True, True])

        backward.append(measure(norm_backward, timer))
    return forward, backward


def _max_pool_samples(timer: InterleavedTimer) -> list[Sample]:
    """2x2 max pooling with indices (what training runs) over a size sweep."""
    samples = []
    for batch, channels, hw in NORM_SIZES:
        x = torch.randn(batch, channels, hw, hw)
        samples.append(measure(lambda x=x: torch.ops.aten.max_pool2d_with_indices(x, [2, 2], [2, 2]), timer))
    return samples


def _elementwise_samples(timer: InterleavedTimer) -> list[Sample]:
    samples = []
    for n in ELEMENTWISE_SIZES:
        x, y = torch.randn(n), torch.randn(n)
        samples.append(measure(lambda x=x, y=y: torch.add(x, y), timer))
        samples.append(measure(lambda x=x: torch.relu(x), timer))
    return samples


def _fake_quant_samples(timer: InterleavedTimer) -> list[Sample]:
    """The fake-quantization operator alone, as QAT runs it on a layer's input (8 bits, with
    gradients). The range tracking around it is elementwise work, priced as such."""
    samples = []
    scale, zero_point = torch.tensor(0.02), torch.tensor(128, dtype=torch.int32)
    fake_quantize = torch.fake_quantize_per_tensor_affine
    for n in ELEMENTWISE_SIZES:
        x = torch.randn(n, requires_grad=True)
        samples.append(measure(lambda x=x: fake_quantize(x, scale, zero_point, 0, 255), timer))
    return samples


def _int8_matmul(rows: int, inner: int, cols: int) -> Callable[[], torch.Tensor]:
    x = torch.randint(-128, 128, (rows, inner), dtype=torch.int8)
    w = torch.randint(-128, 128, (inner, cols), dtype=torch.int8)
    return lambda: torch._int_mm(x, w)


def _int8_samples(timer: InterleavedTimer) -> tuple[list[Sample], list[Sample]]:
    """This host's int8 matrix product (``torch._int_mm``: int8 inputs, int32 sums) over the
    matmul sizes, and over the matrix products that convolutions lower to in an int8 runtime
    (im2col: output positions x (in_channels * k * k), times out_channels)."""
    linear = [measure(_int8_matmul(rows, k, m), timer) for rows, k, m in MATMUL_SIZES]
    conv = []
    for batch, cin, hw, cout, stride, k in CONV_SIZES:
        positions = batch * (-(-hw // stride)) ** 2
        conv.append(measure(_int8_matmul(positions, cin * k * k, cout), timer))
    return linear, conv


def fp16_matmul_is_faster() -> bool:
    """Whether this host's largest swept matmul runs faster in fp16 than in fp32 (best of 5
    after a warm-up): decided once per profile, so that every pass has the same kernels."""
    rows, inner, cols = MATMUL_SIZES[-1]
    best = {}
    for dtype in (torch.float32, torch.float16):
        x, w = torch.randn(rows, inner, dtype=dtype), torch.randn(cols, inner, dtype=dtype)
        F.linear(x, w)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            F.linear(x, w)
            times.append(time.perf_counter() - start)
        best[dtype] = min(times)
    return best[torch.float16] < best[torch.float32]


def measure_kernels(timer: InterleavedTimer, fp16: bool) -> Callable[[], Kernels]:
    """Register every kernel class's size sweep; the returned function fits them once ``timer``
    has run (the fp16 classes only with ``fp16``, where fp16 matmul beats fp32)."""
    int8_linear, int8_conv = _int8_samples(timer)
    norm_forward, norm_backward = _norm_samples(timer)
    sweeps: dict[str, tuple[list[Sample], str]] = {
        "matmul": (_matmul_samples(timer), "matmul"),
        "conv": (_conv_samples(timer), "conv"),
        "conv_backward": (_conv_backward_samples(timer), "conv_backward"),
        "norm": (norm_forward, "norm"),
        "norm_backward": (norm_backward, "norm_backward"),
        "max_pool": (_max_pool_samples(timer), "max_pool"),
        "elementwise": (_elementwise_samples(timer), "elementwise"),
        "fake_quant": (_fake_quant_samples(timer), "fake_quant"),
        "int8_matmul": (int8_linear, "int8_matmul"),
        "int8_conv": (int8_conv, "int8_matmul"),  # measured as its im2col product
    }
    if fp16:  # not timed otherwise: fp16 convolutions without fp16 units can be 100x slower
        sweeps["fp16_matmul"] = (_matmul_samples(timer, torch.float16), "matmul")
        sweeps["fp16_conv"] = (_conv_samples(timer, torch.float16), "conv")

    def fitted() -> Kernels:
        return Kernels.model_construct(**{name: fit_kernel(samples, kind) for name, (samples, kind) in sweeps.items()})

    return fitted


def memory_bandwidth(timer: InterleavedTimer, nbytes: int = 64 * 2**20) -> Callable[[], float]:
    """Bytes per second of a large copy into a preallocated tensor (read plus write)."""
    source = torch.ones(nbytes // 4)
    target = torch.empty_like(source)
    timing = timer.loop(lambda: target.copy_(source))
    return lambda: 2 * nbytes / timing.seconds


def dispatch_overhead(timer: InterleavedTimer) -> Callable[[], float]:
    """Seconds per call of a view, an operation that moves no data."""
    x = torch.ones(4, 4)
    timing = timer.loop(lambda: x.view(16))
    return lambda: timing.seconds


def _residual(measured: float, work: WorkProfile, partial: DeviceProfile) -> float:
    """Wall time the charged operations do not explain (negative where timing noise says so)."""
    return measured - charge_seconds(work, partial)


def measure_overheads(timer: InterleavedTimer) -> Callable[[DeviceProfile], Overheads]:
    """Register the workloads whose residuals give the overheads of steps and module
    rewriting; the returned function computes them, given the kernels in ``partial``, once
    ``timer`` has run."""
    x = torch.randn(8, 8)
    # Chains of tiny layers: their steps are bookkeeping, not kernels, so the residual is clean.
    labels = torch.randint(0, 8, (len(x),))
    steps = [measure(step_fn(ChainNet(depth).train(), x, labels), timer) for depth in (1, 2, 4, 8, 16)]
    # The same chains fake-quantized: what their steps leave beyond the float line is qat_op.
    qat_steps = [
        measure(step_fn(backend.prepare_qat(ChainNet(depth)).train(), x, labels), timer) for depth in (1, 2, 4, 8)
    ]
    model = ChainNet(8)
    modules = sum(1 for _ in model.modules())
    state = model.state_dict()
    build = measure(lambda: ConvNet(4), timer)
    conv_modules = sum(1 for _ in ConvNet(4).modules())
    load = measure(lambda: model.load_state_dict(state), timer)
    payloads = []  # (tensors, write, read) of payloads of three sizes
    for depth in (1, 4, 16):
        chain_state = ChainNet(depth).state_dict()
        payload = encode_fp32(chain_state)
        write = measure(lambda s=chain_state: encode_fp32(s), timer)
        payloads.append((len(chain_state), write, measure(lambda p=payload: decode_to_fp32(p), timer)))
    ptq = measure(lambda: backend.prepare_ptq(model), timer)
    qat = measure(lambda: backend.prepare_qat(model), timer)
    prepared = backend.prepare_ptq(model)
    backend.calibrate(prepared, [x])
    conv = measure(lambda: backend.convert(copy.deepcopy(prepared)), timer)
    deepcopy = measure(lambda: copy.deepcopy(prepared), timer)

    def computed(partial: DeviceProfile) -> Overheads:
        def residual(sample: Sample) -> float:
            return _residual(sample.seconds, sample.work, partial)

        op_counts = [step.work.num_ops - step.work.count("view") for step in steps]
        per_step, per_op_rate = fit_line(op_counts, [residual(step) for step in steps], relative=False)
        qat_op = statistics.median(
            (residual(step) - per_step - ops / per_op_rate) / ops
            for step in qat_steps
            for ops in [step.work.num_ops - step.work.count("view")]
        )
        sizes = [tensors for tensors, _, _ in payloads]
        serialize_payload, serialize_rate = fit_line(sizes, [residual(w) for _, w, _ in payloads], relative=False)
        deserialize_payload, deserialize_rate = fit_line(sizes, [residual(r) for _, _, r in payloads], relative=False)
        # The copy is there only to convert a fresh model each time: take its time and work out.
        convert_residual = residual(conv) - residual(deepcopy)
        floor = 1e-9  # a residual lost in timing noise is still a positive (negligible) cost
        return Overheads.model_construct(
            dispatch=partial.overheads.dispatch,
            train_step=max(per_step, floor),
            train_op=max(1.0 / per_op_rate, floor),
            qat_op=max(qat_op, floor),
            build_module=max(residual(build) / conv_modules, floor),
            load_tensor=max(residual(load) / len(state), floor),
            serialize=max(1.0 / serialize_rate, floor),
            serialize_payload=max(serialize_payload, floor),
            deserialize=max(1.0 / deserialize_rate, floor),
            deserialize_payload=max(deserialize_payload, floor),
            prepare_ptq=max(residual(ptq) / modules, floor),
            prepare_qat=max(residual(qat) / modules, floor),
            convert=max(convert_residual / modules, floor),
        )

    return computed


@dataclass(frozen=True)
class _Pass:
    """One complete measurement of the host."""

    kernels: Kernels
    bandwidth: float
    overheads: Overheads
    factors: InSitu


def _measure_once(repeats: int, memory: float, fp16: bool) -> _Pass:
    """One pass: every measurement registered, timed in turns (:class:`InterleavedTimer`), then fitted."""
    timer = InterleavedTimer(repeats)
    fitted_kernels = measure_kernels(timer, fp16)
    bandwidth_of = memory_bandwidth(timer)
    dispatch_of = dispatch_overhead(timer)
    overheads_of = measure_overheads(timer)
    factors_of = in_situ(timer)
    timer.run()
    kernels, bandwidth = fitted_kernels(), bandwidth_of()
    block, _ = host_channel_block()
    placeholder = Overheads.model_construct(**dict.fromkeys(Overheads.model_fields, 0.0) | {"dispatch": dispatch_of()})

    def profile(overheads: Overheads) -> DeviceProfile:
        return DeviceProfile.model_construct(
            kernels=kernels, memory_bandwidth=bandwidth, overheads=overheads, memory=memory, conv_channel_block=block
        )

    overheads = overheads_of(profile(placeholder))
    factors = factors_of(profile(overheads))
    kernels, overheads = apply_in_situ(kernels, overheads, factors)
    return _Pass(kernels, bandwidth, overheads, factors)


def _median_pass(passes: Sequence[_Pass]) -> _Pass:
    """Every number the median of its value over the passes: robust to one noisy pass."""

    def med(values) -> float:
        return statistics.median(values)

    kernels = {}
    for name, first in passes[0].kernels:
        if first is not None:
            per_pass = [getattr(p.kernels, name) for p in passes]
            kernels[name] = Kernel.model_construct(
                overhead=med(k.overhead for k in per_pass), throughput=med(k.throughput for k in per_pass)
            )
    overheads = {name: med(getattr(p.overheads, name) for p in passes) for name in Overheads.model_fields}
    return _Pass(
        Kernels.model_construct(**kernels),
        med(p.bandwidth for p in passes),
        Overheads.model_construct(**overheads),
        InSitu(*(med(getattr(p.factors, f.name) for p in passes) for f in dataclasses.fields(InSitu))),
    )


def probe_device(settings: ProbeSettings) -> dict[str, Any]:
    """Measure this host and return a device profile as a plain mapping (YAML-ready).

    The whole measurement runs ``settings.passes`` times and each number is the median over
    the passes: on a shared or throttling machine one pass can be off by tens of percent.
    """
    return probe_interleaved(settings, lambda _pass_profile: None)


def probe_interleaved(settings: ProbeSettings, between: Callable[[DeviceProfile], None]) -> dict[str, Any]:
    """:func:`probe_device`, calling ``between(pass_profile)`` after each pass with that pass's
    own profile (on ``settings.threads`` threads): the fidelity check times its workloads
    there, so that the profile and the measurements see the host at the same speeds, whatever
    it does over the minutes they take, and can compare each pass with the timings after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        memory, reserved = host_memory()
        fp16 = fp16_matmul_is_faster()
        passes = []
        for _ in range(settings.passes):
            one = _measure_once(settings.repeats, memory, fp16)
            passes.append(one)
            mapping = profile_mapping(
                settings, one.kernels, one.bandwidth, one.overheads, memory, reserved, one.factors
            )
            between(parse_measured(mapping))
        result = _median_pass(passes)
    finally:
        torch.set_num_threads(threads)
    return profile_mapping(
        settings, result.kernels, result.bandwidth, result.overheads, memory, reserved, result.factors
    )
