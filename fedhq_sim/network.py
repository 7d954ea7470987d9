"""Flow-level network: concurrent transfers share links by max-min fairness.

Every transfer is a flow over a route of directed links. Rates are max-min fair (progressive
filling) across all links, with a per-flow ceiling from TCP's loss response (the Mathis
formula), and are recomputed whenever a flow starts or ends; in between, each flow advances at
its current rate. A transfer first waits the route's one-way propagation latency plus
jitter from a seeded stream. The network owns transport, as SimPy's ``Cable`` example does:
clients ask for a transfer and never compute their own transfer time.

Scale. A plant round can start thousands of uploads through one backhaul, and a naive
reallocation touches every flow at every start and end: quadratic. Here flows are grouped
by what constrains them: the links they share with other active flows, and one ceiling
that folds in the links only they use (a client's own access link is just a cap) and their
TCP ceiling. Max-min fairness gives every flow of a group the same rate, so filling runs
over groups, and each group keeps its members in a heap ordered by the *service* (bits per
member) at which they finish, processor-sharing style: advancing time, finding the next
completion and adding or removing a flow cost O(groups) or O(log flows), not O(flows).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import Counter
from collections.abc import Generator, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

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


class TransferStalledError(Exception):
    """A transfer gave up: a link on its route was down for longer than the stall timeout."""


class LinkSample(NamedTuple):
    """A link's load from ``time_s`` until its next sample: throughput and flows crossing it
    (a named tuple, small: a large run keeps a million samples)."""

    time_s: float
    link: LinkId
    rate_bps: float
    flows: int


def mathis_rate_bps(rtt_s: float, loss: float) -> float:
    """TCP goodput ceiling ``MSS / (RTT * sqrt(p)) * C`` in bit/s; infinite without loss."""
    if loss <= 0.0 or rtt_s <= 0.0:
        return math.inf
    return MSS_BYTES * 8.0 / (rtt_s * math.sqrt(loss)) * MATHIS_C


def weighted_max_min(
    classes: Sequence[tuple[Sequence[LinkId], float, int]], capacity_bps: Mapping[LinkId, float]
) -> list[float]:
    """Per-flow max-min fair rates of flow classes ``(links, ceiling, number of flows)``.

    Progressive filling: every unfrozen flow grows at the same pace until a link saturates or
    a class reaches its ceiling; classes through saturated links, or at their ceiling,
    freeze; repeat. Flows of one class get one rate, so the cost grows with the classes.
    """
    rates = [0.0] * len(classes)
    remaining = {link: capacity_bps[link] for links, _, _ in classes for link in links}
    unfrozen = [i for i, (_, _, n) in enumerate(classes) if n > 0]
    while unfrozen:
        users: Counter[LinkId] = Counter()
        for i in unfrozen:
            for link in classes[i][0]:
                users[link] += classes[i][2]
        increment = min((remaining[link] / n for link, n in users.items()), default=math.inf)
        increment = min(increment, *(classes[i][1] - rates[i] for i in unfrozen))
        for i in unfrozen:
            rates[i] += increment
            for link in classes[i][0]:
                remaining[link] -= increment * classes[i][2]
        saturated = {link for link in users if remaining[link] <= 1e-9 * capacity_bps[link]}
        unfrozen = [
            i for i in unfrozen if rates[i] < classes[i][1] * (1 - 1e-12) and saturated.isdisjoint(classes[i][0])
        ]
    return rates


def max_min_rates(
    routes: Mapping[Hashable, Sequence[LinkId]],
    capacity_bps: Mapping[LinkId, float],
    ceilings_bps: Mapping[Hashable, float] | None = None,
) -> dict[Hashable, float]:
    """Max-min fair rate of every flow ``{flow: route}`` (each flow a class of its own)."""
    ceilings = ceilings_bps or {}
    classes = [(route, ceilings.get(flow, math.inf), 1 if route else 0) for flow, route in routes.items()]
    return dict(zip(routes, weighted_max_min(classes, capacity_bps), strict=True))


@dataclass(eq=False)
class _Flow:
    route: tuple[LinkId, ...]
    size_bits: float
    tcp_ceiling_bps: float
    done: simpy.Event
    group: _Group | None = None
    finish_service: float = 0.0  # the group's service at which this flow has all its bits
    ticket: int = 0  # which heap entry is current (a flow moves between groups)
    stall: object = None  # the current stall watch; a newer one (or none) cancels an older


@dataclass(eq=False)
class _Group:
    shared: tuple[LinkId, ...]
    ceiling_bps: float
    flows: dict[_Flow, None] = field(default_factory=dict)  # insertion-ordered: deterministic sums
    heap: list[tuple[float, int, _Flow]] = field(default_factory=list)
    service_bits: float = 0.0  # bits each member has received since the group was made
    rate_bps: float = 0.0


class FlowNetwork:
    """The links of a topology and the flows crossing them, on a SimPy clock.

    ``monitored`` names the links whose load is sampled into :attr:`samples` (default: all);
    a fleet's own access links carry one transfer each and are better read from its events.
    A link can go down (:meth:`set_down`): flows crossing it stall at zero rate and resume
    when it comes back, or, with ``stall_timeout_s``, fail with :class:`TransferStalledError` once
    they have been stalled that long.
    """

    def __init__(
        self,
        env: simpy.Environment,
        links: Mapping[LinkId, DirectedLink],
        rng: np.random.Generator,
        monitored: Iterable[LinkId] | None = None,
        stall_timeout_s: float | None = None,
    ) -> None:
        self.env = env
        self.links = dict(links)
        self._capacity = {link: spec.capacity_bps for link, spec in self.links.items()}
        self._down: set[LinkId] = set()
        self.stall_timeout_s = stall_timeout_s
        self.rng = rng
        self.monitored = tuple(self.links if monitored is None else monitored)
        self.samples: list[LinkSample] = []
        self._last_sample: dict[LinkId, tuple[float, int]] = {}
        self._link_flows: dict[LinkId, dict[_Flow, None]] = {link: {} for link in self.links}
        self._groups: dict[tuple[tuple[LinkId, ...], float], _Group] = {}
        self._tickets = itertools.count()
        self._active = 0
        self._last_update = env.now
        self._epoch = 0
        self._routes: dict[tuple[LinkId, ...], tuple[float, tuple[float, ...], float]] = {}

    @property
    def active_flows(self) -> int:
        return self._active

    def state_dict(self) -> dict[str, Any]:
        """What a quiet network (between rounds: no flows) needs to go on: its down links. The
        samples so far go back with :meth:`load_state_dict`; the rest starts afresh."""
        if self._active:
            raise RuntimeError("the network carries flows: it has no state to save between rounds")
        return {"down": sorted(self._down)}

    def load_state_dict(self, state: dict[str, Any], samples: Sequence[LinkSample]) -> None:
        for link in state["down"]:
            self._down.add(tuple(link) if isinstance(link, list) else link)
        for link in self._down:
            self._capacity[link] = 0.0
        self.samples = list(samples)
        self._last_sample = {s.link: (s.rate_bps, s.flows) for s in self.samples}

    def one_way_latency_s(self, route: Sequence[LinkId]) -> float:
        """Propagation latency of ``route`` without jitter."""
        return sum(self.links[link].latency_s for link in route)

    def _tcp_ceiling(self, route: Sequence[LinkId]) -> float:
        rtt = 2.0 * self.one_way_latency_s(route)
        delivered = math.prod(1.0 - self.links[link].loss for link in route)
        return mathis_rate_bps(rtt, 1.0 - delivered)

    def _route(self, route: tuple[LinkId, ...]) -> tuple[float, tuple[float, ...], float]:
        """A route's latency, its hops' jitter and its TCP ceiling (computed once per route)."""
        known = self._routes.get(route)
        if known is None:
            jitters = tuple(self.links[link].jitter_s for link in route)
            known = self._routes[route] = (self.one_way_latency_s(route), jitters, self._tcp_ceiling(route))
        return known

    def transfer(self, route: Sequence[LinkId], nbytes: int) -> Generator[simpy.Event, object, None]:
        """Process body: move ``nbytes`` over ``route`` (use with ``yield from``).

        If the calling process is interrupted, the flow leaves the network at once, so a
        dropped client stops taking bandwidth from the others.
        """
        if not route:
            raise ValueError("a transfer needs a route of at least one link")
        route = tuple(route)
        latency_s, jitters, ceiling_bps = self._route(route)
        draws = self.rng.standard_normal(len(route)).tolist()  # one call: the stream of a draw per hop
        jitter = sum(j * abs(draw) for j, draw in zip(jitters, draws, strict=True))
        yield self.env.timeout(latency_s + jitter)
        if nbytes <= 0:
            return
        flow = _Flow(route, nbytes * 8.0, ceiling_bps, self.env.event())
        self._advance()
        self._join(flow)
        if self._down and not self._down.isdisjoint(flow.route):
            self._watch_stall(flow)
        self._reallocate()
        try:
            yield flow.done
        except simpy.Interrupt:
            if flow.group is not None:
                self._advance()
                self._leave(flow)
                self._reallocate()
            raise

    # -- outages --------------------------------------------------------------------------

    def set_down(self, link: LinkId, down: bool) -> None:
        """Take ``link`` down (it carries nothing) or bring it back up, now."""
        if (link in self._down) == down:
            return
        self._advance()
        if down:
            self._down.add(link)
            self._capacity[link] = 0.0
        else:
            self._down.discard(link)
            self._capacity[link] = self.links[link].capacity_bps
        for flow in list(self._link_flows[link]):
            if flow.group is not None:
                self._place(flow, self._unplace(flow))  # a private link's capacity is in the key
            if down:
                self._watch_stall(flow)
            elif self._down.isdisjoint(flow.route):
                flow.stall = None
        self._reallocate()

    def _watch_stall(self, flow: _Flow) -> None:
        if self.stall_timeout_s is None or flow.stall is not None:
            return
        token = flow.stall = object()

        def give_up(_event: simpy.Event) -> None:
            if flow.stall is token and flow.group is not None:
                down = [link for link in flow.route if link in self._down]
                self._advance()
                self._leave(flow)
                flow.done.fail(TransferStalledError(f"link {down[0]} down for more than {self.stall_timeout_s:g} s"))
                self._reallocate()

        self.env.timeout(self.stall_timeout_s).callbacks.append(give_up)

    # -- groups -------------------------------------------------------------------------

    def _key(self, flow: _Flow) -> tuple[tuple[LinkId, ...], float]:
        shared = tuple(link for link in flow.route if len(self._link_flows[link]) > 1)
        private = (self._capacity[link] for link in flow.route if len(self._link_flows[link]) == 1)
        return shared, min([flow.tcp_ceiling_bps, *private])

    def _place(self, flow: _Flow, remaining_bits: float) -> None:
        key = self._key(flow)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(*key)
        flow.group = group
        flow.finish_service = group.service_bits + remaining_bits
        flow.ticket = next(self._tickets)
        group.flows[flow] = None
        heapq.heappush(group.heap, (flow.finish_service, flow.ticket, flow))

    def _unplace(self, flow: _Flow) -> float:
        """Take ``flow`` out of its group (its heap entry goes stale); return its remaining bits."""
        group = flow.group
        assert group is not None
        del group.flows[flow]
        flow.group = None
        flow.ticket = -1  # its heap entry is stale from now on
        if not group.flows:
            del self._groups[(group.shared, group.ceiling_bps)]
        return flow.finish_service - group.service_bits

    def _regroup(self, links: Iterable[LinkId]) -> None:
        """Move the flows on ``links``, whose sharing just changed, to their new groups."""
        for link in links:
            for other in list(self._link_flows[link]):
                if other.group is not None and other.group is not self._groups.get(self._key(other)):
                    self._place(other, self._unplace(other))

    def _join(self, flow: _Flow) -> None:
        for link in flow.route:
            self._link_flows[link][flow] = None
        self._active += 1
        # A link that now carries two flows stops being private to the first one.
        self._regroup(link for link in flow.route if len(self._link_flows[link]) == 2)
        self._place(flow, flow.size_bits)

    def _leave(self, flow: _Flow) -> None:
        self._unplace(flow)
        for link in flow.route:
            del self._link_flows[link][flow]
        self._active -= 1
        self._regroup(link for link in flow.route if len(self._link_flows[link]) == 1)

    # -- time -----------------------------------------------------------------------------

    def _advance(self) -> None:
        elapsed = self.env.now - self._last_update
        for group in self._groups.values():
            group.service_bits += group.rate_bps * elapsed
        self._last_update = self.env.now

    @staticmethod
    def _head(group: _Group) -> _Flow | None:
        while group.heap and group.heap[0][2].ticket != group.heap[0][1]:
            heapq.heappop(group.heap)  # stale: the flow left or moved
        return group.heap[0][2] if group.heap else None

    def _finished(self, epsilon_s: float) -> list[_Flow]:
        done = []
        for group in self._groups.values():
            while (head := self._head(group)) is not None:
                left = head.finish_service - group.service_bits
                if left > max(1e-9 * head.size_bits, group.rate_bps * epsilon_s):
                    break
                heapq.heappop(group.heap)
                done.append(head)
        return done

    def _reallocate(self) -> None:
        # The tolerance grows with the clock: at large simulated times a float step of the
        # clock exceeds a nanosecond, and a smaller residue could never be waited out.
        epsilon_s = max(TIME_EPSILON_S, 4 * math.ulp(self.env.now))
        for flow in self._finished(epsilon_s):
            self._leave(flow)
            flow.done.succeed()
        groups = list(self._groups.values())
        rates = weighted_max_min([(g.shared, g.ceiling_bps, len(g.flows)) for g in groups], self._capacity)
        for group, rate in zip(groups, rates, strict=True):
            group.rate_bps = rate
        self._sample(groups)
        self._epoch += 1
        waits = [
            (head.finish_service - g.service_bits) / g.rate_bps
            for g in groups
            if g.rate_bps > 0 and (head := self._head(g)) is not None
        ]
        if waits:
            epoch = self._epoch
            timer = self.env.timeout(max(min(waits), 0.0))
            timer.callbacks.append(lambda _event: self._on_timer(epoch))

    def _on_timer(self, epoch: int) -> None:
        if epoch == self._epoch:  # a newer allocation superseded this wake-up
            self._advance()
            self._reallocate()

    def _sample(self, groups: Sequence[_Group]) -> None:
        load: Counter[LinkId] = Counter()
        for group in groups:
            for link in group.shared:
                load[link] += group.rate_bps * len(group.flows)
        for link in self.monitored:
            flows = self._link_flows[link]
            rate = load[link] if len(flows) != 1 else next(iter(flows)).group.rate_bps
            rate = 0.0 if link in self._down else float(rate)  # a Counter starts at int 0
            if self._last_sample.get(link) != (rate, len(flows)):
                self._last_sample[link] = (rate, len(flows))
                self.samples.append(LinkSample(float(self.env.now), link, rate, len(flows)))
