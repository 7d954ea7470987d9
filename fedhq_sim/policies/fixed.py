"""Policies whose assignment does not change during training.

``all-fp32`` (no quantization, the accuracy ceiling), ``all-ptq`` and ``all-qat`` (the two
single-strategy baselines) and ``hybrid`` (a fixed share of the fleet runs QAT, the others
PTQ), the naive form of the hybrid idea that FedHQ refines. Who gets the share is the
planner's question that a sweep over ``qat_fraction`` and ``choose`` answers: drawn at random,
the most skewed clients first (FedHQ's data rule alone) or the fastest QAT rounds first (its
hardware rule alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

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
    choose: Literal["random", "skew", "hardware"] = "random"
    """Who runs QAT: drawn once from the seed (from the whole fleet), or the clients able to run
    it ranked by data skew (most skewed first) or by predicted QAT round (fastest first); the
    share counts the whole fleet, so a ranked choice gets fewer QAT clients where fewer are able."""


@register_policy("hybrid")
class FixedHybrid(Policy):
    """A fixed share ``qat_fraction`` of all clients runs QAT, chosen by ``choose``."""

    Options = HybridOptions

    def __init__(self, options: HybridOptions, clients: Sequence[ClientInfo], rng: np.random.Generator) -> None:
        super().__init__(options, clients, rng)
        ids = sorted(self.clients)
        n_qat = round(options.qat_fraction * len(ids))
        if options.choose == "random":
            self.qat_clients = frozenset(int(i) for i in rng.choice(ids, size=n_qat, replace=False))
        else:
            self.qat_clients = frozenset(ranked_for_qat(clients, options.bits, options.choose)[:n_qat])

    def assign(self, ctx: RoundContext) -> dict[int, Strategy]:
        return {cid: self._strategy(cid) for cid in ctx.selected}

    def strategies_for(self, client_id: int) -> frozenset[Strategy]:
        return frozenset({self._strategy(client_id)})

    def _strategy(self, client_id: int) -> Strategy:
        return Strategy("qat" if client_id in self.qat_clients else "ptq", self.options.bits)


def ranked_for_qat(clients: Sequence[ClientInfo], bits: int, by: Literal["skew", "hardware"]) -> list[int]:
    """The ids of the clients able to run QAT at ``bits``, most skewed or fastest QAT round
    first (ties by id); a client the analysis could not predict cannot be ranked and is left out."""
    label = Strategy("qat", bits).label
    able = [c for c in clients if c.analysis is not None and label in c.able]
    if by == "skew":
        able.sort(key=lambda c: (-c.analysis.skew, c.client_id))
    else:
        able.sort(key=lambda c: (c.analysis.round_s(label), c.client_id))
    return [c.client_id for c in able]
