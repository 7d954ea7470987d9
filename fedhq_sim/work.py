"""Work profiles: what a real computation costs, counted operation by operation.

:class:`WorkTracer` is a ``TorchDispatchMode``: while it is active, every aten operation
that PyTorch really executes is recorded with its FLOPs, the bytes
it reads and writes, its precision (``fp32``, ``fp16``, ``fake_quant`` or ``int8``) and its
kernel class (:data:`OpKind`: dense matmul, convolution, its backward, int8 kernels, fake
quantization, elementwise, view). The tracer also follows the bytes of every tensor the
work allocates, so a profile knows its peak working memory. The result, a
:class:`WorkProfile`, depends on the model, the input shapes and the strategy but never on
the host, which is what lets :mod:`fedhq_sim.charge` price it on any device.

FLOPs of matmul and convolution come from ``torch.utils.flop_counter``'s registry (a
deployed model's layers run as int8 kernels on a device: see :func:`int8_execution`); other
ops count one operation per output element (fake quantization: five, for scale, round, clamp, shift and rescale).
View-like ops move no data and count only as dispatches.

Work that is not a tensor operation but costs time on a device all the same, a training
step's framework bookkeeping and the module rewriting of quantization's prepare and convert,
enters a profile as a *marker* (:func:`marker`), priced per occurrence by the device.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypeVar

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

Precision = Literal["fp32", "fp16", "fake_quant", "int8"]
OpKind = Literal[
    "matmul",
    "conv",
    "conv_backward",
    "norm",
    "norm_backward",
    "max_pool",
    "int8_matmul",
    "int8_conv",
    "fake_quant",
    "elementwise",
    "view",
    "marker",
]
MarkerKind = Literal[
    "train_step",
    "train_op",
    "qat_op",
    "warmup_op",
    "warmup_model",
    "round_fixed",
    "build_module",
    "load_tensor",
    "serialize",
    "serialize_payload",
    "deserialize",
    "deserialize_payload",
    "prepare_ptq",
    "prepare_qat",
    "convert",
]
_HALF_DTYPES = (torch.float16, torch.bfloat16)
_MATMUL_OPS = {"mm", "addmm", "bmm", "baddbmm", "matmul"}
_CONV_OPS = {"convolution", "_convolution", "mkldnn_convolution", "conv2d", "conv1d"}
# Normalization and max pooling are far slower per element than one elementwise pass (a
# training-mode batch norm makes several passes for its statistics; max pooling with indices
# compares and records every window), so each is priced as a class of its own.
_NORM_OPS = {
    "native_batch_norm",
    "_native_batch_norm_legit",
    "_native_batch_norm_legit_no_training",
    "_batch_norm_with_update",
    "native_layer_norm",
    "native_group_norm",
}
_NORM_BACKWARD_OPS = {
    "native_batch_norm_backward",
    "batch_norm_backward",
    "native_layer_norm_backward",
    "native_group_norm_backward",
}
_MAX_POOL_OPS = {"max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices", "max_pool2d"}
FAKE_QUANT_OPS_PER_ELEMENT = 5
_SKIPPED_NAMESPACES = {"profiler"}
# aten.fake_quantize_per_* (and their cachemask variants, which training runs).
_FAKE_QUANT_MARKERS = ("fake_quant",)

T = TypeVar("T")


class OpCost(NamedTuple):
    """One executed operation: its name, kernel class, precision, FLOPs and bytes moved.

    A tuple: profiles hold hundreds of them, are sorted when charged and sent back from
    worker processes every round, and tuples compare, hash and pickle in C.
    """

    op: str
    kind: OpKind
    precision: Precision
    flops: float
    nbytes: float
    channels: tuple[int, ...] = ()
    """A convolution's ``(in_channels, out_channels, groups, computes_input_gradient)``, empty
    for every other operation: a device whose convolution kernels block channels by its vector
    width pays for the padded channels (see :func:`fedhq_sim.charge.padded_flops`)."""


@dataclass(frozen=True)
class WorkProfile:
    """A multiset of :class:`OpCost` and the peak bytes the work held at once.

    Adding profiles runs them one after the other, so counts add and the peak is the larger
    of the two; :meth:`times` repeats a computation, which leaves its peak unchanged.
    """

    counts: Counter[OpCost] = field(default_factory=Counter)
    peak_bytes: int = 0
    prices: dict[int, tuple[Any, float]] = field(default_factory=dict, compare=False, repr=False)
    """Seconds already charged for this work, by device (see :func:`fedhq_sim.charge.charge_seconds`)."""

    def __add__(self, other: WorkProfile) -> WorkProfile:
        return WorkProfile(self.counts + other.counts, max(self.peak_bytes, other.peak_bytes))

    def times(self, n: int) -> WorkProfile:
        """The work of running this ``n`` times."""
        if not n:
            return WorkProfile()
        return WorkProfile(Counter({op: count * n for op, count in self.counts.items()}), self.peak_bytes)

    def count(self, kind: OpKind) -> int:
        """How many operations of one kernel class the work executed."""
        return sum(c for op, c in self.counts.items() if op.kind == kind)

    @property
    def num_ops(self) -> int:
        return sum(self.counts.values())

    def flops(self, precision: Precision | None = None) -> float:
        return sum(c * op.flops for op, c in self.counts.items() if precision in (None, op.precision))

    @property
    def nbytes(self) -> float:
        return sum(c * op.nbytes for op, c in self.counts.items())


def marker(kind: MarkerKind, count: int = 1) -> WorkProfile:
    """Work that is no tensor operation: ``count`` training steps or rewritten modules."""
    return WorkProfile(Counter({OpCost(f"sim.{kind}", "marker", "fp32", 0.0, 0.0): count}))


def step_markers(step_work: WorkProfile) -> WorkProfile:
    """The bookkeeping of one training step: once per step, and once per recorded operation.

    A fake-quantized (QAT) step pays more per operation than a float one: its quantizers are
    Python modules whose range updates run as many tiny no-grad operations with scalar
    arguments, each costing more than the autograd-recorded operations that ``train_op``
    is fitted on (about 20 % of a QAT step on the reference host). Such a step, recognized
    by its fake-quantization operations, also carries ``qat_op`` per operation.
    """
    ops = step_work.num_ops - step_work.count("view")
    markers = marker("train_step") + marker("train_op", ops)
    if step_work.count("fake_quant"):
        markers = markers + marker("qat_op", ops)
    return markers


def warmup_markers(first_step: WorkProfile) -> WorkProfile:
    """A freshly built model's warm-up: once for the model, and once per recorded operation of
    its first training step (a fresh two-layer chain pays about 0.5 ms on the reference host
    before its per-operation share counts: see :func:`fedhq_sim.in_situ.warmup_line`)."""
    return marker("warmup_model") + marker("warmup_op", first_step.num_ops - first_step.count("view"))


def _tensors(values: Iterable[Any]) -> list[torch.Tensor]:
    return [v for v in values if isinstance(v, torch.Tensor)]


def _is_view(func: torch._ops.OpOverload) -> bool:
    returns = func._schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


def _precision(name: str, tensors: list[torch.Tensor]) -> Precision:
    if any(marker in name for marker in _FAKE_QUANT_MARKERS):
        return "fake_quant"
    if any(t.dtype in _HALF_DTYPES for t in tensors):
        return "fp16"
    return "fp32"


def _dense_kind(name: str, precision: Precision) -> OpKind | None:
    """The dense kernel class of an op name such as ``aten.addmm.default``, if it is one."""
    base = name.split(".")[1] if "." in name else name
    if base == "convolution_backward":
        return "conv_backward"
    if base in _CONV_OPS:
        return "conv"
    if base in _MATMUL_OPS:
        return "matmul"
    if base in _NORM_OPS:
        return "norm"
    if base in _NORM_BACKWARD_OPS:
        return "norm_backward"
    if base in _MAX_POOL_OPS:
        return "max_pool"
    return "fake_quant" if precision == "fake_quant" else None


_GATHER_OPS = frozenset({"aten.index.Tensor", "aten.index_select.default"})
_CONV_FORWARD = frozenset({"aten.convolution.default", "aten._convolution.default"})


def _conv_channels(name: str, args: tuple[Any, ...]) -> tuple[int, ...]:
    """``(in_channels, out_channels, groups, computes_input_gradient)`` of a convolution (forward
    or backward, not transposed), from its weight's shape and its groups argument."""
    if name in _CONV_FORWARD and len(args) >= 9 and not args[6]:
        weight, groups, grad_input = args[1], int(args[8]), 0
    elif name == "aten.convolution_backward.default" and len(args) >= 11 and not args[7]:
        weight, groups, grad_input = args[2], int(args[9]), int(bool(args[10][0]))
    else:
        return ()
    return (int(weight.shape[1]) * groups, int(weight.shape[0]), groups, grad_input)


_INT8_EXECUTION = ContextVar("fedhq_sim_int8_execution", default=False)
_INT8_LAYER = ContextVar("fedhq_sim_int8_layer", default=False)


@contextmanager
def int8_execution() -> Iterator[None]:
    """Trace a converted (reference) model as the int8 kernels a device would run for it.

    The reference model computes in fp32 with fake quantization at the integer grid's
    rounding points; a device runs the same layers as int8 kernels on int8 tensors. Inside
    this context, the convolutions and matrix products of quantized layers (those run under
    :func:`int8_layer`) count as ``int8_conv``/``int8_matmul``, and every other operation's
    tensor elements as one byte each; fake quantization and inference-mode batch norm count
    as views (no work), because an int8 runtime folds batch norm into the preceding
    convolution and requantizes in each kernel's epilogue. A convolution or product outside
    a quantized layer (a functional call, attention) stays an fp32 kernel, as on the device.
    So a device profile prices what the device would run, not what the host did.
    """
    token = _INT8_EXECUTION.set(True)
    try:
        yield
    finally:
        _INT8_EXECUTION.reset(token)


_AS_INT8: dict[OpKind, OpKind] = {"conv": "int8_conv", "matmul": "int8_matmul"}
_FOLDED_BATCH_NORMS = frozenset({"_native_batch_norm_legit_no_training", "native_batch_norm", "batch_norm"})


@contextmanager
def int8_layer() -> Iterator[None]:
    """Mark the operations of one quantized layer of a deployed model (see :func:`int8_execution`)."""
    token = _INT8_LAYER.set(True)
    try:
        yield
    finally:
        _INT8_LAYER.reset(token)


def _int8_op_cost(cost: OpCost, flat_in: list[torch.Tensor], flat_out: list[torch.Tensor]) -> OpCost:
    base = cost.op.split(".")[1] if "." in cost.op else cost.op
    if cost.kind in ("fake_quant", "view") or base in _FOLDED_BATCH_NORMS:
        return OpCost(cost.op, "view", "int8", 0.0, 0.0)
    if cost.kind in _AS_INT8 and not _INT8_LAYER.get():
        return cost  # an fp32 kernel on the device too
    nbytes = float(sum(t.numel() for t in flat_in + flat_out))
    return OpCost(cost.op, _AS_INT8.get(cost.kind, cost.kind), "int8", cost.flops, nbytes)


def op_cost(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> OpCost:
    """The cost of one executed operation (see the module docstring for the counting rules)."""
    cost, flat_in, flat_out = _op_cost(func, args, kwargs, out)
    return _int8_op_cost(cost, flat_in, flat_out) if _INT8_EXECUTION.get() else cost


def _op_cost(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> tuple[OpCost, list[torch.Tensor], list[torch.Tensor]]:
    name = str(func)
    flat_in = _tensors(tree_flatten((args, kwargs))[0])
    flat_out = _tensors(tree_flatten(out)[0])
    precision = _precision(name, flat_in + flat_out)
    if isinstance(func, torch._ops.OpOverload) and _is_view(func):
        return OpCost(name, "view", precision, 0.0, 0.0), flat_in, flat_out
    kind: OpKind = _dense_kind(name, precision) or "elementwise"
    if name in _GATHER_OPS:
        # A gather reads the rows it returns (and the index), not the whole source: counting
        # the source would make a minibatch's cost depend on how much data the client holds.
        indices = _tensors(tree_flatten((args[1:], kwargs))[0])
        nbytes = float(sum(t.numel() * t.element_size() for t in indices + flat_out + flat_out))
    else:
        nbytes = float(sum(t.numel() * t.element_size() for t in flat_in + flat_out))
    packet = getattr(func, "_overloadpacket", None)
    if name == "aten._int_mm.default":  # int8 x int8 -> int32 products: 2 * M * K * N operations
        (m, k), n = args[0].shape, args[1].shape[1]
        return OpCost(name, "int8_matmul", "int8", 2.0 * m * k * n, nbytes), flat_in, flat_out
    if packet in flop_registry:
        flops = float(flop_registry[packet](*args, **kwargs, out_val=out))
    elif kind == "fake_quant":
        # Only the quantized values count; the fused kernel's second output is a boolean mask.
        flops = float(flat_out[0].numel()) * FAKE_QUANT_OPS_PER_ELEMENT if flat_out else 0.0
    else:
        flops = float(sum(t.numel() for t in flat_out))
    channels = _conv_channels(name, args) if kind in ("conv", "conv_backward") else ()
    return OpCost(name, kind, precision, flops, nbytes, channels), flat_in, flat_out


class _LiveBytes:
    """Bytes of the tensor storages the traced work allocated and still holds, and their peak.

    Each new storage is counted once, when an operation first returns it, and uncounted when
    PyTorch frees it (a ``weakref.finalize`` on the storage); storages that existed before
    the trace (the model's weights) are not the work's and are accounted for by the caller.
    """

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def add(self, tensors: list[torch.Tensor]) -> None:
        for tensor in tensors:
            storage = tensor.untyped_storage()
            key, nbytes = id(storage), storage.nbytes()
            if key in self._seen:
                continue
            self._seen.add(key)
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._release, key, nbytes)


class WorkTracer(TorchDispatchMode):
    """Records the cost of every operation executed while the mode is active."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[OpCost] = Counter()
        self._memory = _LiveBytes()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.namespace not in _SKIPPED_NAMESPACES:
            self.counts[op_cost(func, args, kwargs, out)] += 1
            self._memory.add(_tensors(tree_flatten(out)[0]))
        return out

    @property
    def profile(self) -> WorkProfile:
        return WorkProfile(Counter(self.counts), self._memory.peak)


_TRACING = ContextVar("fedhq_sim_tracing", default=True)


@contextmanager
def untraced() -> Iterator[None]:
    """Run real work without tracing it (profiles come back empty): for timing it on a host.

    The fidelity check measures how long client work really takes here; the tracer's own
    Python cost per operation must not be part of that measurement.
    """
    token = _TRACING.set(False)
    try:
        yield
    finally:
        _TRACING.reset(token)


def traced(fn: Callable[[], T]) -> tuple[T, WorkProfile]:
    """Run ``fn`` for real and return its result with the work it executed."""
    if not _TRACING.get():
        return fn(), WorkProfile()
    with WorkTracer() as tracer:
        result = fn()
    return result, tracer.profile


class WorkCache:
    """Work profiles of repeated identical computations, traced once per key and reused.

    A training step, or reading the global model, or calibrating and converting a trained
    model, executes the same operations on the same shapes every time it runs: which
    operations run, and on which shapes, depends on the model, the strategy and the batch
    shapes, never on the values. So each piece is traced on its first real execution and,
    from then on, executed untraced (at bare PyTorch speed) and charged its cached profile.
    The key must hold everything the operations depend on; ``tests/test_work_and_charge.py``
    checks that a cached profile equals a fresh trace on other data.
    """

    def __init__(self) -> None:
        self._profiles: dict[tuple[Any, ...], WorkProfile] = {}

    def once(self, key: tuple[Any, ...], traced_fn: Callable[[], tuple[T, WorkProfile]]) -> tuple[T, WorkProfile]:
        """Run ``traced_fn`` (which returns its result and its traced work) for real; trace it
        only the first time ``key`` is seen, and return the cached profile after that."""
        cached = self._profiles.get(key)
        if cached is not None:
            with untraced():
                result, _ = traced_fn()
            return result, cached
        if not _TRACING.get():
            return traced_fn()
        result, profile = traced_fn()
        self._profiles[key] = profile
        return result, profile

    def run(self, key: tuple[Any, ...], fn: Callable[[], T]) -> tuple[T, WorkProfile]:
        """:meth:`once` for a plain function: trace ``fn`` itself."""
        return self.once(key, lambda: traced(fn))

    def get(self, key: tuple[Any, ...]) -> WorkProfile | None:
        """The cached profile of ``key``, if it was traced."""
        return self._profiles.get(key)

    def clear(self) -> None:
        """Forget every profile: the next execution of each piece is traced again."""
        self._profiles.clear()

    def __len__(self) -> int:
        return len(self._profiles)


WORK_CACHE = WorkCache()
"""This process's cache: shared by every run in it, which is valid because keys are complete."""
