"""Flow-level network: concurrent transfers share links by max-min fairness.

Every transfer is a flow over a route of directed links. Rates are max-min fair (progressive
filling) across all links, with a per-flow ceiling from TCP's loss response (the Mathis
formula), and are recomputed whenever a flow starts or ends; in between, each flow advances at
its current rate. A transfer first waits the route's one-way propagation latency plus
jitter from a seeded stream. The network owns transport, as SimPy's ``Cable`` example does:
clients ask for a transfer and never compute their own transfer time.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Generator, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import simpy

LinkId = Hashable
MSS_BYTES = 1460  # TCP maximum segment size on Ethernet-sized frames
MATHIS_C = math.sqrt(3.0 / 2.0)  # constant of the Mathis et al. (1997) periodic-loss model
# A flow within a nanosecond of its end is finished: float rounding of the clock must not
# leave a residue that schedules wake-ups too small to move simulated time forward.
TIME_EPSILON_S = 1e-9


@dataclass(frozen=True)
class DirectedLink:
    """One direction of a physical link."""

    capacity_bps: float
    latency_s: float
    jitter_s: float
    loss: float


def mathis_rate_bps(rtt_s: float, loss: float) -> float:
    """TCP goodput ceiling ``MSS / (RTT * sqrt(p)) * C`` in bit/s; infinite without loss."""
    if loss <= 0.0 or rtt_s <= 0.0:
        return math.inf
    return MSS_BYTES * 8.0 / (rtt_s * math.sqrt(loss)) * MATHIS_C


def max_min_rates(
    routes: Mapping[Hashable, Sequence[LinkId]],
    capacity_bps: Mapping[LinkId, float],
    ceilings_bps: Mapping[Hashable, float] | None = None,
) -> dict[Hashable, float]:
    """Max-min fair rates by progressive filling.

    All unfrozen flows grow at the same pace until a link saturates or a flow reaches its
    ceiling; flows through saturated links (and flows at their ceiling) freeze; repeat.
    """
    ceilings = ceilings_bps or {}
    rates = dict.fromkeys(routes, 0.0)
    remaining = {link: capacity_bps[link] for route in routes.values() for link in route}
    unfrozen = {flow for flow, route in routes.items() if route}
    while unfrozen:
        users = Counter(link for flow in unfrozen for link in routes[flow])
        increment = min(remaining[link] / n for link, n in users.items())
        increment = min(increment, *(ceilings.get(f, math.inf) - rates[f] for f in unfrozen))
        for flow in unfrozen:
            rates[flow] += increment
            for link in routes[flow]:
                remaining[link] -= increment
        saturated = {link for link in users if remaining[link] <= 1e-9 * capacity_bps[link]}
        unfrozen = {
            f
            for f in unfrozen
            if rates[f] < ceilings.get(f, math.inf) * (1 - 1e-12) and not saturated.intersection(routes[f])
        }
    return rates


@dataclass(eq=False)
class _Flow:
    route: tuple[LinkId, ...]
    size_bits: float
    ceiling_bps: float
    done: simpy.Event
    remaining_bits: float = field(init=False)
    rate_bps: float = 0.0

    def __post_init__(self) -> None:
        self.remaining_bits = self.size_bits


class FlowNetwork:
    """The links of a topology and the flows crossing them, on a SimPy clock."""

    def __init__(self, env: simpy.Environment, links: Mapping[LinkId, DirectedLink], rng: np.random.Generator) -> None:
        self.env = env
        self.links = dict(links)
        self.rng = rng
        self._flows: list[_Flow] = []
        self._last_update = env.now
        self._epoch = 0

    @property
    def active_flows(self) -> int:
        return len(self._flows)

    def one_way_latency_s(self, route: Sequence[LinkId]) -> float:
        """Propagation latency of ``route`` without jitter."""
        return sum(self.links[link].latency_s for link in route)

    def _ceiling(self, route: Sequence[LinkId]) -> float:
        rtt = 2.0 * self.one_way_latency_s(route)
        delivered = math.prod(1.0 - self.links[link].loss for link in route)
        return mathis_rate_bps(rtt, 1.0 - delivered)

    def transfer(self, route: Sequence[LinkId], nbytes: int) -> Generator[simpy.Event, object, None]:
        """Process body: move ``nbytes`` over ``route`` (use with ``yield from``).

        If the calling process is interrupted, the flow leaves the network at once, so a
        dropped client stops taking bandwidth from the others.
        """
        if not route:
            raise ValueError("a transfer needs a route of at least one link")
        jitter = sum(self.links[link].jitter_s * abs(self.rng.standard_normal()) for link in route)
        yield self.env.timeout(self.one_way_latency_s(route) + jitter)
        if nbytes <= 0:
            return
        flow = _Flow(tuple(route), nbytes * 8.0, self._ceiling(route), self.env.event())
        self._advance()
        self._flows.append(flow)
        self._reallocate()
        try:
            yield flow.done
        except simpy.Interrupt:
            if flow in self._flows:
                self._advance()
                self._flows.remove(flow)
                self._reallocate()
            raise

    def _advance(self) -> None:
        elapsed = self.env.now - self._last_update
        for flow in self._flows:
            flow.remaining_bits -= flow.rate_bps * elapsed
        self._last_update = self.env.now

    def _reallocate(self) -> None:
        # The tolerance grows with the clock: at large simulated times a float step of the
        # clock exceeds a nanosecond, and a smaller residue could never be waited out.
        epsilon_s = max(TIME_EPSILON_S, 4 * math.ulp(self.env.now))
        finished = [f for f in self._flows if f.remaining_bits <= max(1e-9 * f.size_bits, f.rate_bps * epsilon_s)]
        for flow in finished:
            self._flows.remove(flow)
            flow.done.succeed()
        rates = max_min_rates(
            {f: f.route for f in self._flows},
            {link: spec.capacity_bps for link, spec in self.links.items()},
            {f: f.ceiling_bps for f in self._flows},
        )
        for flow in self._flows:
            flow.rate_bps = rates[flow]
        self._epoch += 1
        if self._flows:
            wait = min(f.remaining_bits / f.rate_bps for f in self._flows)
            epoch = self._epoch
            timer = self.env.timeout(max(wait, 0.0))
            timer.callbacks.append(lambda _event: self._on_timer(epoch))

    def _on_timer(self, epoch: int) -> None:
        if epoch == self._epoch:  # a newer allocation superseded this wake-up
            self._advance()
            self._reallocate()
