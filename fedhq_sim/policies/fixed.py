"""Policies whose assignment does not change during training.

``all-fp32`` (no quantization, the accuracy ceiling), ``all-ptq`` and ``all-qat`` (the two
single-strategy baselines) and ``hybrid`` (a fixed, seeded random share of the fleet runs QAT;
the others run PTQ), which is the naive form of the hybrid idea that FedHQ refines.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field

from fedhq_sim.policies.base import ClientInfo, Policy, PolicyOptions, RoundContext, register_policy
from fedhq_sim.quant.strategy import FP32, Strategy


@register_policy("all-fp32")
class AllFP32(Policy):
    """Every client trains and uploads in fp32; the server still deploys the model quantized
    at ``bits``, so its deployed accuracy compares with the quantizing policies'."""

    def assign(self, ctx: RoundContext) -> dict[int, Strategy]:
        return dict.fromkeys(ctx.selected, FP32)

    def strategies_for(self, client_id: int) -> frozenset[Strategy]:
        return frozenset({FP32})


@register_policy("all-ptq")
class AllPTQ(Policy):
    """Every client trains in fp32, then calibrates and converts (post-training quantization)."""

    def assign(self, ctx: RoundContext) -> dict[int, Strategy]:
        return dict.fromkeys(ctx.selected, Strategy("ptq", self.options.bits))

    def strategies_for(self, client_id: int) -> frozenset[Strategy]:
        return frozenset({Strategy("ptq", self.options.bits)})


@register_policy("all-qat")
class AllQAT(Policy):
    """Every client trains with fake quantization, then converts (quantization-aware training)."""

    def assign(self, ctx: RoundContext) -> dict[int, Strategy]:
        return dict.fromkeys(ctx.selected, Strategy("qat", self.options.bits))

    def strategies_for(self, client_id: int) -> frozenset[Strategy]:
        return frozenset({Strategy("qat", self.options.bits)})


class HybridOptions(PolicyOptions):
    qat_fraction: float = Field(ge=0.0, le=1.0)


@register_policy("hybrid")
class FixedHybrid(Policy):
    """A fixed share ``qat_fraction`` of all clients, drawn once from the seed, runs QAT."""

    Options = HybridOptions

    def __init__(self, options: HybridOptions, clients: Sequence[ClientInfo], rng: np.random.Generator) -> None:
        super().__init__(options, clients, rng)
        ids = sorted(self.clients)
        n_qat = round(options.qat_fraction * len(ids))
        self.qat_clients = frozenset(int(i) for i in rng.choice(ids, size=n_qat, replace=False))

    def assign(self, ctx: RoundContext) -> dict[int, Strategy]:
        return {cid: self._strategy(cid) for cid in ctx.selected}

    def strategies_for(self, client_id: int) -> frozenset[Strategy]:
        return frozenset({self._strategy(client_id)})

    def _strategy(self, client_id: int) -> Strategy:
        return Strategy("qat" if client_id in self.qat_clients else "ptq", self.options.bits)
