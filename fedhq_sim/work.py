"""Work profiles: what a real computation costs, counted operation by operation.

:class:`WorkTracer` is a ``TorchDispatchMode``: while it is active, every aten (and
``quantized::``) operation that PyTorch really executes is recorded with its FLOPs, the bytes
it reads and writes, and its precision class (``fp32``, ``fake_quant`` or ``int8``). The
result, a :class:`WorkProfile`, depends on the model, the input shapes and the strategy but
never on the host, which is what lets :mod:`fedhq_sim.charge` price it on any device.

FLOPs of matmul and convolution come from ``torch.utils.flop_counter``'s registry; the
int8 kernels are counted from their packed weights; other ops count one operation per
output element (fake quantization: five, for scale, round, clamp, shift and rescale).
View-like ops move no data and count only as dispatches.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

Precision = Literal["fp32", "fake_quant", "int8"]
FAKE_QUANT_OPS_PER_ELEMENT = 5
_SKIPPED_NAMESPACES = {"profiler"}
# aten.fake_quantize_per_* and the fused observer + fake-quant kernel of eager QAT.
_FAKE_QUANT_MARKERS = ("fake_quant", "_obs_fq_")

T = TypeVar("T")


@dataclass(frozen=True, order=True)
class OpCost:
    """One executed operation: its name, precision class, FLOPs and bytes moved."""

    op: str
    precision: Precision
    flops: float
    nbytes: float


@dataclass(frozen=True)
class WorkProfile:
    """A multiset of :class:`OpCost`; adding and scaling profiles compose computations."""

    counts: Counter[OpCost] = field(default_factory=Counter)

    def __add__(self, other: WorkProfile) -> WorkProfile:
        return WorkProfile(self.counts + other.counts)

    def times(self, n: int) -> WorkProfile:
        """The work of running this ``n`` times."""
        return WorkProfile(Counter({op: count * n for op, count in self.counts.items()}) if n else Counter())

    @property
    def num_ops(self) -> int:
        return sum(self.counts.values())

    def flops(self, precision: Precision | None = None) -> float:
        return sum(c * op.flops for op, c in self.counts.items() if precision in (None, op.precision))

    @property
    def nbytes(self) -> float:
        return sum(c * op.nbytes for op, c in self.counts.items())


def _tensors(values: Iterable[Any]) -> list[torch.Tensor]:
    return [v for v in values if isinstance(v, torch.Tensor)]


def _packed_weight(args: tuple[Any, ...]) -> torch.Tensor | None:
    for arg in args:
        unpack = getattr(arg, "unpack", None)
        if callable(unpack):
            return unpack()[0]
    return None


def _int8_kernel_flops(args: tuple[Any, ...], out: Any) -> tuple[float, float]:
    """FLOPs and weight bytes of a ``quantized::conv*``/``linear*`` call from its packed weight."""
    weight = _packed_weight(args)
    if weight is None or not isinstance(out, torch.Tensor):
        return float(out.numel()) if isinstance(out, torch.Tensor) else 0.0, 0.0
    # Each output element is a dot product over one weight row: in_features (linear) or
    # in_channels/groups * kh * kw (conv), i.e. weight[0].numel() multiply-adds.
    flops = 2.0 * out.numel() * weight[0].numel()
    return flops, float(weight.numel() * weight.element_size())


def _is_view(func: torch._ops.OpOverload) -> bool:
    returns = func._schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


def op_cost(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> OpCost:
    """The cost of one executed operation (see the module docstring for the counting rules)."""
    name = str(func)
    flat_in = _tensors(tree_flatten((args, kwargs))[0])
    flat_out = _tensors(tree_flatten(out)[0])
    quantized = name.startswith("quantized.") or any(t.is_quantized for t in flat_in + flat_out)
    fake_quant = any(marker in name for marker in _FAKE_QUANT_MARKERS)
    precision: Precision = "int8" if quantized else ("fake_quant" if fake_quant else "fp32")
    if isinstance(func, torch._ops.OpOverload) and _is_view(func):
        return OpCost(name, precision, 0.0, 0.0)
    nbytes = float(sum(t.numel() * t.element_size() for t in flat_in + flat_out))
    packet = getattr(func, "_overloadpacket", None)
    if packet in flop_registry:
        flops = float(flop_registry[packet](*args, **kwargs, out_val=out))
    elif name.startswith("quantized.") and ("conv" in name or "linear" in name):
        flops, weight_bytes = _int8_kernel_flops(args, out)
        nbytes += weight_bytes
    elif precision == "fake_quant":
        # Only the quantized values count; the fused kernel's second output is a boolean mask.
        flops = float(flat_out[0].numel()) * FAKE_QUANT_OPS_PER_ELEMENT if flat_out else 0.0
    else:
        flops = float(sum(t.numel() for t in flat_out))
    return OpCost(name, precision, flops, nbytes)


class WorkTracer(TorchDispatchMode):
    """Records the cost of every operation executed while the mode is active."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[OpCost] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.namespace not in _SKIPPED_NAMESPACES:
            self.counts[op_cost(func, args, kwargs, out)] += 1
        return out

    @property
    def profile(self) -> WorkProfile:
        return WorkProfile(Counter(self.counts))


def traced(fn: Callable[[], T]) -> tuple[T, WorkProfile]:
    """Run ``fn`` for real and return its result with the work it executed."""
    with WorkTracer() as tracer:
        result = fn()
    return result, tracer.profile


class StepCache:
    """Work profiles of repeated identical steps, traced once per key and reused.

    A training step executes the same operations on the same shapes every time, so its
    profile is traced on its first real execution and reused for later ones; the key must
    hold everything the operations depend on (model, strategy, batch shape).
    """

    def __init__(self) -> None:
        self._profiles: dict[tuple[Any, ...], WorkProfile] = {}

    def run(self, key: tuple[Any, ...], fn: Callable[[], T]) -> tuple[T, WorkProfile]:
        cached = self._profiles.get(key)
        if cached is not None:
            return fn(), cached
        result, profile = traced(fn)
        self._profiles[key] = profile
        return result, profile

    def __len__(self) -> int:
        return len(self._profiles)
