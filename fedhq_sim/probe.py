"""Measure the machine this runs on and express it as a device profile.

Every kernel class of :class:`~fedhq_sim.profiles.Kernels` is timed on synthetic tensors over
a sweep of sizes, and a line ``time = overhead + FLOPs / throughput`` is fitted to the
medians (weighted by relative error, so small and large calls count alike). The overheads
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

from fedhq_sim.charge import charge_seconds
from fedhq_sim.in_situ import InSitu, apply_in_situ, in_situ
from fedhq_sim.probe_networks import ChainNet, ConvNet, step_fn
from fedhq_sim.probe_profile import ProbeSettings, host_memory, parse_measured, profile_mapping
from fedhq_sim.profiles import DeviceProfile, Kernel, Kernels, Overheads
from fedhq_sim.quant import backend
from fedhq_sim.quant.payload import decode_to_fp32, encode_fp32
from fedhq_sim.work import WorkProfile, traced

TARGET_LOOP_S = 0.004
"""Each timed sample repeats its call until it lasts about this long (timer resolution)."""


@dataclass(frozen=True)
class Sample:
    """One measured call: the work it executed (traced) and its median seconds per call."""

    work: WorkProfile
    seconds: float


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of one call of ``fn`` over ``repeats`` timed loops (after a warm-up)."""
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    loop = max(1, min(1000, round(TARGET_LOOP_S / once)))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loop):
            fn()
        times.append((time.perf_counter() - start) / loop)
    return statistics.median(times)


def measure(fn: Callable[[], Any], repeats: int) -> Sample:
    """Trace ``fn`` once and time it untraced."""
    _, work = traced(fn)
    return Sample(work, median_seconds(fn, repeats))


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
    return sum(count * op.flops for op, count in sample.work.counts.items() if op.kind == kind)


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


def _matmul_samples(repeats: int, dtype: torch.dtype = torch.float32) -> list[Sample]:
    samples = []
    for rows, k, m in MATMUL_SIZES:
        x, w, b = torch.randn(rows, k, dtype=dtype), torch.randn(m, k, dtype=dtype), torch.randn(m, dtype=dtype)
        samples.append(measure(lambda x=x, w=w, b=b: F.linear(x, w, b), repeats))
    return samples


def _conv_inputs(size: tuple[int, ...], dtype: torch.dtype = torch.float32):
    batch, cin, hw, cout, stride, k = size
    x, w = torch.randn(batch, cin, hw, hw, dtype=dtype), torch.randn(cout, cin, k, k, dtype=dtype)
    return x, w, stride, k // 2


def _conv_samples(repeats: int, dtype: torch.dtype = torch.float32) -> list[Sample]:
    samples = []
    for size in CONV_SIZES:
        x, w, stride, pad = _conv_inputs(size, dtype)
        samples.append(measure(lambda x=x, w=w, s=stride, p=pad: F.conv2d(x, w, stride=s, padding=p), repeats))
    return samples


def _conv_backward_samples(repeats: int) -> list[Sample]:
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

        samples.append(measure(backward, repeats))
    return samples


def _norm_samples(repeats: int) -> tuple[list[Sample], list[Sample]]:
    """Training-mode batch norm, forward and backward, over a size sweep."""
    forward, backward = [], []
    for batch, channels, hw in NORM_SIZES:
        x = torch.randn(batch, channels, hw, hw)
        weight, bias = torch.ones(channels), torch.zeros(channels)
        mean, var = torch.zeros(channels), torch.ones(channels)
        out, save_mean, save_invstd = torch.ops.aten.native_batch_norm(x, weight, bias, mean, var, True, 0.1, 1e-5)
        forward.append(measure(lambda x=x, w=weight, b=bias, m=mean, v=var: F.batch_norm(x, m, v, w, b, True), repeats))
        grad = torch.randn_like(out)

        def norm_backward(x=x, g=grad, w=weight, m=mean, v=var, sm=save_mean, si=save_invstd):
            return torch.ops.aten.native_batch_norm_backward(g, x, w, m, v, sm, si, True, 1e-5, [True, True, True])

        backward.append(measure(norm_backward, repeats))
    return forward, backward


def _max_pool_samples(repeats: int) -> list[Sample]:
    """2x2 max pooling with indices (what training runs) over a size sweep."""
    samples = []
    for batch, channels, hw in NORM_SIZES:
        x = torch.randn(batch, channels, hw, hw)
        samples.append(measure(lambda x=x: torch.ops.aten.max_pool2d_with_indices(x, [2, 2], [2, 2]), repeats))
    return samples


def _elementwise_samples(repeats: int) -> list[Sample]:
    samples = []
    for n in ELEMENTWISE_SIZES:
        x, y = torch.randn(n), torch.randn(n)
        samples.append(measure(lambda x=x, y=y: torch.add(x, y), repeats))
        samples.append(measure(lambda x=x: torch.relu(x), repeats))
    return samples


def _fake_quant_samples(repeats: int) -> list[Sample]:
    """The fake-quantization operator alone, as QAT runs it on a layer's input (8 bits, with
    gradients). The range tracking around it is elementwise work, priced as such."""
    samples = []
    scale, zero_point = torch.tensor(0.02), torch.tensor(128, dtype=torch.int32)
    fake_quantize = torch.fake_quantize_per_tensor_affine
    for n in ELEMENTWISE_SIZES:
        x = torch.randn(n, requires_grad=True)
        samples.append(measure(lambda x=x: fake_quantize(x, scale, zero_point, 0, 255), repeats))
    return samples


def _int8_matmul(rows: int, inner: int, cols: int) -> Callable[[], torch.Tensor]:
    x = torch.randint(-128, 128, (rows, inner), dtype=torch.int8)
    w = torch.randint(-128, 128, (inner, cols), dtype=torch.int8)
    return lambda: torch._int_mm(x, w)


def _int8_samples(repeats: int) -> tuple[list[Sample], list[Sample]]:
    """This host's int8 matrix product (``torch._int_mm``: int8 inputs, int32 sums) over the
    matmul sizes, and over the matrix products that convolutions lower to in an int8 runtime
    (im2col: output positions x (in_channels * k * k), times out_channels)."""
    linear = [measure(_int8_matmul(rows, k, m), repeats) for rows, k, m in MATMUL_SIZES]
    conv = []
    for batch, cin, hw, cout, stride, k in CONV_SIZES:
        positions = batch * (-(-hw // stride)) ** 2
        conv.append(measure(_int8_matmul(positions, cin * k * k, cout), repeats))
    return linear, conv


def measure_kernels(repeats: int) -> Kernels:
    """Fit every kernel class on this host (fp16 only where fp16 matmul beats fp32)."""
    int8_linear, int8_conv = _int8_samples(repeats)
    norm_forward, norm_backward = _norm_samples(repeats)
    kernels: dict[str, Kernel] = {
        "matmul": fit_kernel(_matmul_samples(repeats), "matmul"),
        "conv": fit_kernel(_conv_samples(repeats), "conv"),
        "conv_backward": fit_kernel(_conv_backward_samples(repeats), "conv_backward"),
        "norm": fit_kernel(norm_forward, "norm"),
        "norm_backward": fit_kernel(norm_backward, "norm_backward"),
        "max_pool": fit_kernel(_max_pool_samples(repeats), "max_pool"),
        "elementwise": fit_kernel(_elementwise_samples(repeats), "elementwise"),
        "fake_quant": fit_kernel(_fake_quant_samples(repeats), "fake_quant"),
        "int8_matmul": fit_kernel(int8_linear, "int8_matmul"),
        "int8_conv": fit_kernel(int8_conv, "int8_matmul"),  # measured as its im2col product
    }
    fp16_matmul = fit_kernel(_matmul_samples(repeats, torch.float16), "matmul")
    if fp16_matmul.throughput > kernels["matmul"].throughput:
        kernels["fp16_matmul"] = fp16_matmul
        kernels["fp16_conv"] = fit_kernel(_conv_samples(repeats, torch.float16), "conv")
    return Kernels.model_construct(**kernels)


def memory_bandwidth(repeats: int, nbytes: int = 64 * 2**20) -> float:
    """Bytes per second of a large copy into a preallocated tensor (read plus write)."""
    source = torch.ones(nbytes // 4)
    target = torch.empty_like(source)
    return 2 * nbytes / median_seconds(lambda: target.copy_(source), repeats)


def dispatch_overhead(repeats: int) -> float:
    """Seconds per call of a view, an operation that moves no data."""
    x = torch.ones(4, 4)
    return median_seconds(lambda: x.view(16), repeats)


def _residual(measured: float, work: WorkProfile, partial: DeviceProfile) -> float:
    """Wall time the charged operations do not explain (negative where timing noise says so)."""
    return measured - charge_seconds(work, partial)


def measure_overheads(repeats: int, partial: DeviceProfile) -> Overheads:
    """Residual overheads of steps and module rewriting, given the kernels in ``partial``."""
    x = torch.randn(8, 8)
    op_counts, step_residuals = [], []
    # Chains of tiny layers: their steps are bookkeeping, not kernels, so the residual is clean.
    workloads = [(ChainNet(depth), x) for depth in (1, 2, 4, 8, 16)]
    for model, inputs in workloads:
        labels = torch.randint(0, 8, (len(inputs),))
        sample = measure(step_fn(model.train(), inputs, labels), repeats)
        op_counts.append(sample.work.num_ops - sample.work.count("view"))
        step_residuals.append(_residual(sample.seconds, sample.work, partial))
    per_step, per_op_rate = fit_line(op_counts, step_residuals, relative=False)
    model = ChainNet(8)
    modules = sum(1 for _ in model.modules())
    state = model.state_dict()
    tensors = len(state)
    build = measure(lambda: ConvNet(4), repeats)
    conv_modules = sum(1 for _ in ConvNet(4).modules())
    load = measure(lambda: model.load_state_dict(state), repeats)
    write_sizes, write_residuals, read_residuals = [], [], []
    for depth in (1, 4, 16):
        chain_state = ChainNet(depth).state_dict()
        write = measure(lambda s=chain_state: encode_fp32(s), repeats)
        payload = encode_fp32(chain_state)
        read = measure(lambda p=payload: decode_to_fp32(p), repeats)
        write_sizes.append(len(chain_state))
        write_residuals.append(_residual(write.seconds, write.work, partial))
        read_residuals.append(_residual(read.seconds, read.work, partial))
    serialize_payload, serialize_rate = fit_line(write_sizes, write_residuals, relative=False)
    deserialize_payload, deserialize_rate = fit_line(write_sizes, read_residuals, relative=False)
    ptq = measure(lambda: backend.prepare_ptq(model), repeats)
    qat = measure(lambda: backend.prepare_qat(model), repeats)
    prepared = backend.prepare_ptq(model)
    backend.calibrate(prepared, [x])
    conv = measure(lambda: backend.convert(copy.deepcopy(prepared)), repeats)
    deepcopy = measure(lambda: copy.deepcopy(prepared), repeats)
    # The copy is there only to convert a fresh model each time: take its time and work out.
    convert_residual = _residual(conv.seconds, conv.work, partial) - _residual(deepcopy.seconds, deepcopy.work, partial)
    floor = 1e-9  # a residual lost in timing noise is still a positive (negligible) cost
    return Overheads.model_construct(
        dispatch=partial.overheads.dispatch,
        train_step=max(per_step, floor),
        train_op=max(1.0 / per_op_rate, floor),
        build_module=max(_residual(build.seconds, build.work, partial) / conv_modules, floor),
        load_tensor=max(_residual(load.seconds, load.work, partial) / tensors, floor),
        serialize=max(1.0 / serialize_rate, floor),
        serialize_payload=max(serialize_payload, floor),
        deserialize=max(1.0 / deserialize_rate, floor),
        deserialize_payload=max(deserialize_payload, floor),
        prepare_ptq=max(_residual(ptq.seconds, ptq.work, partial) / modules, floor),
        prepare_qat=max(_residual(qat.seconds, qat.work, partial) / modules, floor),
        convert=max(convert_residual / modules, floor),
    )


@dataclass(frozen=True)
class _Pass:
    """One complete measurement of the host."""

    kernels: Kernels
    bandwidth: float
    overheads: Overheads
    factors: InSitu


def _measure_once(repeats: int, memory: float) -> _Pass:
    kernels = measure_kernels(repeats)
    bandwidth = memory_bandwidth(repeats)
    placeholder = Overheads.model_construct(
        **dict.fromkeys(Overheads.model_fields, 0.0) | {"dispatch": dispatch_overhead(repeats)}
    )
    partial = DeviceProfile.model_construct(
        kernels=kernels, memory_bandwidth=bandwidth, overheads=placeholder, memory=memory
    )
    overheads = measure_overheads(repeats, partial)
    microbenchmarked = DeviceProfile.model_construct(
        kernels=kernels, memory_bandwidth=bandwidth, overheads=overheads, memory=memory
    )
    factors = in_situ(repeats, microbenchmarked)
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
        passes = []
        for _ in range(settings.passes):
            one = _measure_once(settings.repeats, memory)
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
