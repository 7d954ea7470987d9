"""What a client does in a round: train in fp32, or quantize by PTQ or QAT at some bit width."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

StrategyKind = Literal["fp32", "ptq", "qat"]
SUPPORTED_BITS = (4, 8)


@dataclass(frozen=True, order=True)
class Strategy:
    """A value (and a cache key): ``Strategy("qat", 8)`` is 8-bit quantization-aware training."""

    kind: StrategyKind
    bits: int

    def __post_init__(self) -> None:
        if self.kind == "fp32" and self.bits != 32:
            raise ValueError(f"an fp32 strategy has 32 bits, got {self.bits}")
        if self.kind != "fp32" and self.bits not in SUPPORTED_BITS:
            raise ValueError(f"{self.kind} supports bits {SUPPORTED_BITS}, got {self.bits}")

    @property
    def label(self) -> str:
        """Short name used in tables and plots: ``fp32``, ``ptq8``, ``qat8``."""
        return "fp32" if self.kind == "fp32" else f"{self.kind}{self.bits}"

    @classmethod
    def from_label(cls, label: str) -> Strategy:
        """The strategy a :attr:`label` names: ``ptq8`` -> ``Strategy("ptq", 8)``."""
        if label == "fp32":
            return cls("fp32", 32)
        kind, bits = label[:3], label[3:]
        if kind not in ("ptq", "qat") or not bits.isdigit():
            raise ValueError(f"not a strategy label: {label!r}")
        return cls(kind, int(bits))  # type: ignore[arg-type]


FP32 = Strategy("fp32", 32)
