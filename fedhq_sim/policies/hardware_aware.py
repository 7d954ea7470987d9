"""Assignments from the hardware and data analysis (:mod:`fedhq_sim.analysis`).

The **coarse initialization** gives PTQ to most clients and QAT where it pays:

1. QAT "for free": a client whose predicted QAT round ends within the all-PTQ critical
   path (the slowest client's predicted PTQ round) does not lengthen the round;
2. then, by data skew (most skewed first, where PTQ's calibration on few labels hurts the
   deployed model most), clients whose predicted QAT round stays within the latency budget
   (``(1 + latency_budget) x`` the critical path), while at most ``max_qat_fraction`` of the
   fleet runs QAT.

``deadline-greedy`` is step 1 alone (a baseline that ignores data). Every choice carries
its reason, which ``fedhq-sim analyze`` prints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from fedhq_sim.policies.base import ClientInfo, Policy, PolicyOptions, RoundContext, register_policy
from fedhq_sim.quant.strategy import Strategy


@dataclass(frozen=True)
class Choice:
    strategy: Strategy
    reason: str


def ptq_critical_path(clients: Sequence[ClientInfo], bits: int) -> float:
    """The predicted all-PTQ round: the slowest PTQ-capable client's PTQ round."""
    label = Strategy("ptq", bits).label
    rounds = [c.analysis.round_s(label) for c in clients if c.analysis is not None and label in c.able]
    return max(rounds, default=0.0)


def coarse_assignment(
    clients: Sequence[ClientInfo], bits: int, latency_budget: float, max_qat_fraction: float, *, use_skew: bool = True
) -> dict[int, Choice]:
    """Each client's initial strategy and why (see the module docstring)."""
    ptq, qat = Strategy("ptq", bits), Strategy("qat", bits)
    path = ptq_critical_path(clients, bits)
    limit = (1.0 + latency_budget) * path
    max_qat = int(max_qat_fraction * len(clients))
    choices: dict[int, Choice] = {}
    for c in clients:
        if c.analysis is None or qat.label not in c.able:
            choices[c.client_id] = Choice(ptq, "cannot run QAT (memory, link or deadline)")
        elif c.analysis.round_s(qat.label) <= path:
            t = c.analysis.round_s(qat.label)
            choices[c.client_id] = Choice(qat, f"QAT for free: {t:.3g} s <= all-PTQ critical path {path:.3g} s")
    n_qat = sum(choice.strategy == qat for choice in choices.values())
    rest = [c for c in clients if c.client_id not in choices]
    if use_skew:
        rest.sort(key=lambda c: (-c.analysis.skew, c.client_id))
    for c in rest:
        t, skew = c.analysis.round_s(qat.label), c.analysis.skew
        if use_skew and t <= limit and n_qat < max_qat:
            choices[c.client_id] = Choice(qat, f"skew {skew:.2f}: QAT round {t:.3g} s within budget {limit:.3g} s")
            n_qat += 1
        elif not use_skew or t > limit:
            choices[c.client_id] = Choice(ptq, f"QAT round {t:.3g} s would lengthen the round past {limit:.3g} s")
        else:
            full = f"{n_qat} on QAT" + (f", {max_qat} by max_qat_fraction" if n_qat == max_qat else ", all free")
            choices[c.client_id] = Choice(ptq, f"skew {skew:.2f}: the QAT share is full ({full})")
    return choices


class CoarseOptions(PolicyOptions):
    latency_budget: float = Field(default=0.1, ge=0.0, le=10.0)
    max_qat_fraction: float = Field(default=0.5, ge=0.0, le=1.0)


class _Fixed(Policy):
    """A policy whose assignment is decided once, before training."""

    choices: Mapping[int, Choice]

    def assign(self, ctx: RoundContext) -> dict[int, Strategy]:
        return {cid: self.choices[cid].strategy for cid in ctx.selected}

    def strategies_for(self, client_id: int) -> frozenset[Strategy]:
        return frozenset({self.choices[client_id].strategy})


@register_policy("deadline-greedy")
class DeadlineGreedy(_Fixed):
    """QAT wherever it fits the all-PTQ critical path, PTQ elsewhere; ignores data."""

    def __init__(self, options: PolicyOptions, clients: Sequence[ClientInfo], rng: np.random.Generator) -> None:
        super().__init__(options, clients, rng)
        self.choices = coarse_assignment(clients, options.bits, 0.0, 1.0, use_skew=False)


@register_policy("coarse-init")
class CoarseInit(_Fixed):
    """FedHQ's coarse-grained global initialization alone, kept for the whole run."""

    Options = CoarseOptions

    def __init__(self, options: CoarseOptions, clients: Sequence[ClientInfo], rng: np.random.Generator) -> None:
        super().__init__(options, clients, rng)
        self.choices = coarse_assignment(clients, options.bits, options.latency_budget, options.max_qat_fraction)


@register_policy("random-hybrid")
class RandomHybrid(_Fixed):
    """As many QAT clients as FedHQ's initialization picks, but drawn at random (seeded) from
    the clients able to run QAT: the baseline that isolates the value of *which* clients."""

    Options = CoarseOptions

    def __init__(self, options: CoarseOptions, clients: Sequence[ClientInfo], rng: np.random.Generator) -> None:
        super().__init__(options, clients, rng)
        ptq, qat = Strategy("ptq", options.bits), Strategy("qat", options.bits)
        coarse = coarse_assignment(clients, options.bits, options.latency_budget, options.max_qat_fraction)
        n_qat = sum(choice.strategy == qat for choice in coarse.values())
        able = [c.client_id for c in clients if qat.label in c.able]
        drawn = {int(cid) for cid in rng.choice(able, size=min(n_qat, len(able)), replace=False)}
        self.choices = {
            c.client_id: Choice(qat, f"drawn at random ({n_qat} as in FedHQ's initialization)")
            if c.client_id in drawn
            else Choice(ptq, "not drawn")
            for c in clients
        }
