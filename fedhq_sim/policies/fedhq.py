"""FedHQ: the coarse global initialization, then a learned fine-grained adjustment.

Round 1 starts from :func:`~fedhq_sim.policies.hardware_aware.coarse_assignment`. After every
``adjust_every`` rounds the policy asks its :class:`~fedhq_sim.policies.benefit_model.BenefitModel`
for each client's benefit of QAT (how much less loss the deployment is predicted to add to its
update on QAT than on PTQ) and moves clients, with ``m`` the fleet's median benefit, ``f`` the
``min_benefit`` floor (a share of the mean gap of PTQ updates) and the margin ``max(h |m|, f)``:

- only clients whose predicted QAT round fits the latency budget may run QAT, and at most
  ``max_qat_fraction`` of the fleet does, so the budget holds after every move;
- a PTQ client is promoted when its benefit exceeds ``m`` by the margin and exceeds ``f``,
  into a free QAT place or in place of the QAT client with the lowest benefit if its own is
  larger by the margin;
- a QAT client is demoted when its benefit falls below ``-f`` (QAT is predicted to lose more
  to the deployment than PTQ), or below ``m`` by the margin;
- clients with QAT "for free" (their QAT round is no longer than the all-PTQ critical path)
  are demoted on the first rule only: their QAT costs the round nothing, so they are never
  swapped out or demoted to make room, but free in time is not free in accuracy or energy;
- nothing moves until the model has seen enough labels, and a client that moved stays put
  for two adjustment periods.

Promotion and demotion thresholds do not overlap and a swap must gain the margin, so under
constant observations every client moves at most once (no flapping). docs/policies.md has
the features, the label and the update rule.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field

from fedhq_sim.policies.base import ClientInfo, ClientReport, Policy, RoundContext, register_policy
from fedhq_sim.policies.benefit_model import FEATURES, BenefitModel
from fedhq_sim.policies.hardware_aware import CoarseOptions, coarse_assignment, ptq_critical_path
from fedhq_sim.quant.strategy import Strategy

WARM_UP_LABELS_PER_FEATURE = 3
"""No adjustment before the model has seen this many labels per coefficient: its first
predictions, from a handful of labels, are shrunk towards the mean and would move clients
that the next rounds move back."""
DWELL_ADJUSTMENTS = 2
"""A client that moved stays put for this many adjustment periods."""


class FedHQOptions(CoarseOptions):
    adjust_every: int = Field(default=3, ge=1, le=1000)
    """Rounds between adjustments (K)."""
    hysteresis: float = Field(default=0.25, ge=0.0, le=10.0)
    """Relative margin a move must clear (see the module docstring)."""
    forgetting: float = Field(default=0.9, gt=0.0, le=1.0)
    ridge: float = Field(default=1e-3, gt=0.0)
    """L2 penalty: small, because the QAT terms are learned from few clients over a narrow range
    of skew (a penalty of 0.1 shrank their slope by half on ten clients)."""
    min_benefit: float = Field(default=0.1, ge=0.0, le=1.0)
    """The smallest benefit acted on, as a share of the mean deployment gap of PTQ updates: a
    client moves to QAT only if QAT is predicted to recover more than this share of what the
    deployment costs a PTQ update, and back if QAT is predicted to lose that much more. Noise
    in the labels, and the ridge penalty where they show no effect at all, then move nobody."""


@dataclass(frozen=True)
class Move:
    """One change of a client's strategy by the adjustment, with why."""

    round: int
    client_id: int
    strategy: Strategy
    reason: str


@register_policy("fedhq")
class FedHQ(Policy):
    """Coarse hardware- and data-aware initialization plus the learned adjustment."""

    Options = FedHQOptions
    observes_deployment_gap = True
    observes_training = True

    def __init__(self, options: FedHQOptions, clients: Sequence[ClientInfo], rng: np.random.Generator) -> None:
        super().__init__(options, clients, rng)
        bits = options.bits
        self.ptq, self.qat = Strategy("ptq", bits), Strategy("qat", bits)
        self.initial = coarse_assignment(clients, bits, options.latency_budget, options.max_qat_fraction)
        self.current = {cid: choice.strategy for cid, choice in self.initial.items()}
        path = ptq_critical_path(clients, bits)
        limit = (1.0 + options.latency_budget) * path
        qat_round = {
            c.client_id: c.analysis.round_s(self.qat.label)
            for c in clients
            if c.analysis is not None and self.qat.label in c.able
        }
        self.free = frozenset(cid for cid, t in qat_round.items() if t <= path)
        self.within_budget = frozenset(cid for cid, t in qat_round.items() if t <= limit)
        self.max_qat = max(int(options.max_qat_fraction * len(clients)), len(self.free))
        self.model = BenefitModel(clients, self.ptq.label, forgetting=options.forgetting, ridge=options.ridge)
        self.moves: list[Move] = []
        self._last_moved: dict[int, int] = {}
        self._rounds_seen = 0

    def assign(self, ctx: RoundContext) -> dict[int, Strategy]:
        return {cid: self.current[cid] for cid in ctx.selected}

    def strategies_for(self, client_id: int) -> frozenset[Strategy]:
        if client_id in self.within_budget:
            return frozenset({self.ptq, self.qat})
        return frozenset({self.current[client_id]})

    def observe(self, reports: Sequence[ClientReport]) -> None:
        self.model.update(reports)
        self._rounds_seen += 1
        warm = self.model.labels_seen >= WARM_UP_LABELS_PER_FEATURE * len(FEATURES)
        if warm and self._rounds_seen % self.options.adjust_every == 0:
            self._adjust(max((r.round for r in reports), default=self._rounds_seen))

    def _adjust(self, round_index: int) -> None:
        """One adjustment: O(n log n) in the fleet, so it stays cheap for large fleets."""
        h = self.options.hysteresis
        floor = self.options.min_benefit * abs(self.model.ptq_mean_label)
        benefit = self.model.predict(sorted(self.current))
        median = float(np.median(list(benefit.values())))

        def margin(value: float) -> float:
            return max(h * abs(value), floor)

        low, high = median - margin(median), median + margin(median)
        settled_after = round_index - DWELL_ADJUSTMENTS * self.options.adjust_every
        movable = sorted(cid for cid in self.within_budget if self._last_moved.get(cid, settled_after) <= settled_after)
        for cid in movable:
            if self.current[cid] != self.qat:
                continue
            if benefit[cid] < -floor:
                self._move(round_index, cid, self.ptq, f"benefit {benefit[cid]:.3g} < -{floor:.3g}: QAT hurts")
            elif cid not in self.free and benefit[cid] < low:
                self._move(round_index, cid, self.ptq, f"benefit {benefit[cid]:.3g} < {low:.3g} (median - margin)")
        candidates = sorted(
            (cid for cid in movable if self.current[cid] == self.ptq and benefit[cid] > max(high, floor)),
            key=lambda cid: (-benefit[cid], cid),
        )
        n_qat = sum(s == self.qat for s in self.current.values())
        weakest_first = [(benefit[q], q) for q in movable if self.current[q] == self.qat and q not in self.free]
        heapq.heapify(weakest_first)
        for cid in candidates:
            why = f"benefit {benefit[cid]:.3g} > {max(high, floor):.3g} (median + margin, and the floor)"
            if n_qat < self.max_qat:
                self._move(round_index, cid, self.qat, why)
                n_qat += 1
            elif weakest_first and benefit[cid] > weakest_first[0][0] + margin(weakest_first[0][0]):
                _, weakest = heapq.heappop(weakest_first)
                self._move(round_index, weakest, self.ptq, f"benefit {benefit[weakest]:.3g}: swapped out for {cid}")
                self._move(round_index, cid, self.qat, f"{why}; swapped in for {weakest}")
            else:
                continue
            if cid not in self.free:
                heapq.heappush(weakest_first, (benefit[cid], cid))

    def decision_log(self) -> list[dict[str, object]]:
        return [
            {"after_round": m.round, "client_id": m.client_id, "strategy": m.strategy.label, "reason": m.reason}
            for m in self.moves
        ]

    def state_dict(self) -> dict[str, Any]:
        return {
            "current": {cid: s.label for cid, s in self.current.items()},
            "moves": [(m.round, m.client_id, m.strategy.label, m.reason) for m in self.moves],
            "last_moved": dict(self._last_moved),
            "rounds_seen": self._rounds_seen,
            "model": self.model.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.current = {cid: Strategy.from_label(label) for cid, label in state["current"].items()}
        self.moves = [Move(r, cid, Strategy.from_label(label), why) for r, cid, label, why in state["moves"]]
        self._last_moved = dict(state["last_moved"])
        self._rounds_seen = state["rounds_seen"]
        self.model.load_state_dict(state["model"])

    def _move(self, round_index: int, client_id: int, strategy: Strategy, reason: str) -> None:
        self.current[client_id] = strategy
        self._last_moved[client_id] = round_index
        self.moves.append(Move(round_index, client_id, strategy, reason))
