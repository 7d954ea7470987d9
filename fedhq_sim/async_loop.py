"""The asynchronous modes' loop: FedAsync, FedBuff and semi-synchronous rounds on the
components and clock of the synchronous one (:mod:`fedhq_sim.aggregation_modes` says what
each mode does; design.md what a turn's phases are).

A *turn* is one client's download, local work and upload, from the model version current
when it began. The server keeps ``concurrency`` turns in flight (``async``, ``buffered``)
or begins ``clients_per_round`` at each fixed period (``semi-sync``); arrivals wait in a
buffer; the server applies it as a new version, charged on its profile, one version at a
time. Each version gets a record of the window since the one before
(:func:`fedhq_sim.recorder.version_record`), and the policy is asked and told as in a
round: ``assign`` when turns begin (``RoundContext.round`` is the version they count
toward), ``observe`` with the turns each version applied or lost.

Site gateways relay in these modes: a member's turn runs over its full route, since a
gateway's aggregate needs its members to report together, which turns do not.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import simpy

from fedhq_sim.aggregation_modes import buffer_size, concurrency
from fedhq_sim.clock import late_timeout
from fedhq_sim.components import RUN_ENDED, Client, Outcome, Runtime, Server
from fedhq_sim.errors import SimulationError
from fedhq_sim.executors import Pending
from fedhq_sim.faults import Corruption, draw
from fedhq_sim.policies import ClientReport, Policy, RoundContext
from fedhq_sim.quant.strategy import Strategy
from fedhq_sim.recorder import RoundTimes, version_record
from fedhq_sim.records import PhaseRecord, RoundRecord
from fedhq_sim.round_work import RoundWork
from fedhq_sim.scenario import LoadedScenario
from fedhq_sim.server_work import Mixing
from fedhq_sim.world import World


class Host(Protocol):
    """What the loop acts through: the parts of the run's :class:`~fedhq_sim.engine.Simulation`
    (named here, not imported, so that the engine may import this module)."""

    scenario: LoadedScenario
    world: World
    work: RoundWork
    policy: Policy
    rng: dict[str, np.random.Generator]
    eligible: tuple[int, ...]
    env: simpy.Environment
    runtime: Runtime
    clients: list[Client]
    server: Server
    rounds: list[RoundRecord]
    phases: list[PhaseRecord]
    _unsettled: list[tuple[int, Pending | None]]
    _policy_s: float
    _injects_faults: bool
    _corruptions: tuple[tuple[Corruption, float], ...]
    _crashes_fired: set[int]

    def is_last(self, r: int) -> bool: ...


TURN_DEADLINE = "round deadline"  # a turn longer than round_deadline is dropped (as in a round)


@dataclass(frozen=True)
class Arrival:
    """An update that reached the server: whose, from which version, and how stale it was."""

    outcome: Outcome
    base: int
    staleness: int


class IdlePool:
    """The clients not in a turn, drawn from uniformly at random in constant time: a fleet of
    thousands refills a slot at every arrival, and a scan of the fleet each time would make
    a run quadratic in its size."""

    TRIES = 8  # random picks before a scan for the available ones (most are, in most plants)

    def __init__(self, client_ids: Iterable[int]) -> None:
        self.items = list(client_ids)
        self._where = {c: i for i, c in enumerate(self.items)}

    def add(self, client_id: int) -> None:
        self._where[client_id] = len(self.items)
        self.items.append(client_id)

    def remove(self, client_id: int) -> None:
        """Take ``client_id`` out, moving the last client into its place."""
        i, last = self._where.pop(client_id), self.items.pop()
        if last != client_id:
            self.items[i], self._where[last] = last, i

    def draw(self, rng: np.random.Generator, n: int, available: Callable[[int], bool]) -> list[int]:
        """Up to ``n`` clients for which ``available`` holds, each uniform over those left
        (picks that are not available are drawn again), taken out of the pool; sorted."""
        chosen: list[int] = []
        while len(chosen) < n and self.items:
            for _ in range(self.TRIES):
                pick = self.items[int(rng.integers(len(self.items)))]
                if available(pick):
                    break
            else:
                ready = [c for c in self.items if available(c)]
                if not ready:
                    break
                pick = ready[int(rng.integers(len(ready)))]
            self.remove(pick)
            chosen.append(pick)
        return sorted(chosen)


class AsynchronousLoop:
    """The server's side of an asynchronous run of ``simulation`` (its clock, components,
    policy and records)."""

    def __init__(self, simulation: Host) -> None:
        self.sim = simulation
        training = simulation.scenario.spec.training
        self.mode = training.mode
        self.options = training.aggregation
        self.slots = concurrency(self.options, training.clients_per_round)
        self.buffer_size = {"async": 1, "buffered": buffer_size(self.options, training.clients_per_round)}.get(
            self.mode, 0
        )
        self.version = 0
        self.busy: set[int] = set()
        self.idle = IdlePool(simulation.eligible)
        self.buffer: list[Arrival] = []
        self.lost: list[Outcome] = []  # turns that ended without an update since the last version
        self.dispatched: list[tuple[int, Strategy]] = []  # turns begun since the last version
        self.turns_idle_s: list[tuple[int, float]] = []  # turns ended since the last version
        self.in_flight: dict[int, simpy.Process] = {}  # each busy client's own process
        self.turns: dict[int, simpy.Process] = {}  # the processes watching them
        self.window_start_s, self.window_first_phase = 0.0, 0
        self.versions: dict[int, simpy.Event] = {}
        self._arrival: simpy.Event | None = None
        self._wake_at = math.inf  # when a refill is already scheduled for (availability)
        self._stopped = False
        self._applied_any = False  # no version applied updates yet (so no ranges were deployed)

    def start(self) -> None:
        """Begin the server's processes (at the clock's start)."""
        env = self.sim.env
        self.sim.runtime.version = 0
        if self.mode == "semi-sync":
            env.process(self._periods())
        else:
            env.process(self._applying())
            self._refill()

    def version_done(self, v: int) -> simpy.Event:
        """The event of version ``v``'s record being made."""
        return self.versions.setdefault(v, self.sim.env.event())

    # Turns ---------------------------------------------------------------------------

    def _begin(self, chosen: list[int]) -> None:
        """Begin turns for ``chosen`` clients from the current version."""
        sim = self.sim
        spec = sim.scenario.spec
        r = self.version + 1
        decided = time.perf_counter()
        assignment = sim.policy.assign(RoundContext(r, tuple(chosen)))
        sim._policy_s += time.perf_counter() - decided
        able = {cid: assignment[cid] for cid in chosen if assignment[cid].label in sim.world.able[cid]}
        model_nbytes = sim.work.dispatch(self.version, able)
        if sim._injects_faults:
            pending = {i: s for i, s in sim.scenario.scheduled_crashes.items() if i not in sim._crashes_fired}
            faults, fired = draw(tuple(chosen), sim.scenario.crash_rules, pending, sim._corruptions, r, spec.seed)
            sim.runtime.faults.update(faults)
            sim._crashes_fired.update(fired)
        limit_s = spec.training.round_deadline
        for cid in chosen:
            self.busy.add(cid)  # drawn from the idle pool already
            self.dispatched.append((cid, assignment[cid]))
            routes = (sim.world.topology.downlink_routes[cid], sim.world.topology.uplink_routes[cid])
            proc = sim.clients[cid].start(r, assignment[cid], model_nbytes, routes, sim.env.now + limit_s)
            self.in_flight[cid] = proc
            self.turns[cid] = sim.env.process(self._turn(cid, proc))

    def _turn(self, cid: int, proc: simpy.Process) -> Generator:
        """Watch one client's turn: dropped if it outlasts ``round_deadline``; its update
        goes to the buffer on arrival."""
        sim, env = self.sim, self.sim.env
        base, began, computed_s = self.version, env.now, sim.runtime.recorder.computed_s[cid]
        yield proc | late_timeout(env, sim.scenario.spec.training.round_deadline)
        if proc.is_alive:
            proc.interrupt(TURN_DEADLINE)
        outcome: Outcome = yield proc
        sim.runtime.faults.pop(cid, None)
        del self.in_flight[cid], self.turns[cid]
        self.turns_idle_s.append((cid, env.now - began - (sim.runtime.recorder.computed_s[cid] - computed_s)))
        if outcome.result is not None:
            self.buffer.append(Arrival(outcome, base, self.version - base))
            if self._arrival is not None and not self._arrival.triggered:
                self._arrival.succeed()
        else:
            self.lost.append(outcome)
        if self.mode == "async" and outcome.result is not None:
            return  # FedAsync's client starts again once its update is applied
        self.busy.discard(cid)
        self.idle.add(cid)
        if self.mode != "semi-sync" and len(self.buffer) < self.buffer_size:
            self._refill()  # else once the version this arrival completes is applied

    def _draw(self, n: int) -> list[int]:
        """Up to ``n`` clients drawn from the idle, available ones, uniformly at random."""
        now, availability = self.sim.env.now, self.sim.scenario.availability
        return self.idle.draw(self.sim.rng["selection"], n, lambda c: availability.available(c, now))

    def _refill(self) -> None:
        """Give every free slot to a client drawn from the idle, available ones; if too few
        are available, try again when the next one comes on."""
        if self._stopped:
            return
        free = self.slots - len(self.busy)
        if free <= 0:
            return
        chosen = self._draw(free)
        n = len(chosen)
        if n:
            self._begin(chosen)
        if n < free:
            idle = self.idle.items
            at = self.sim.scenario.availability.next_available(idle, self.sim.env.now) if idle else math.inf
            if at == math.inf and not self.busy:
                now = self.sim.env.now
                raise SimulationError(f"version {self.version + 1}: no client is available at {now:.1f} s or later")
            if at < self._wake_at:
                self._wake_at = at
                self.sim.env.process(self._refill_at(at))

    def _refill_at(self, at: float) -> Generator:
        yield self.sim.env.timeout(at - self.sim.env.now)
        if self._wake_at == at:
            self._wake_at = math.inf
            self._refill()

    # Versions ------------------------------------------------------------------------

    def _applying(self) -> Generator:
        """FedAsync and FedBuff: apply the buffer at every ``buffer_size``-th arrival."""
        env = self.sim.env
        while True:
            while len(self.buffer) < self.buffer_size:
                self._arrival = env.event()
                yield self._arrival
            collect_end = env.now
            taken, self.buffer = self.buffer[: self.buffer_size], self.buffer[self.buffer_size :]
            yield from self._version(taken, collect_end, "ok")
            if self._stopped:
                return
            if self.mode == "async":
                for arrival in taken:
                    self.busy.discard(arrival.outcome.client_id)
                    self.idle.add(arrival.outcome.client_id)
            self._refill()

    def _periods(self) -> Generator:
        """Semi-sync: rounds of a fixed period; late updates join the round they arrive in."""
        sim, env = self.sim, self.sim.env
        training = sim.scenario.spec.training
        period_s = self.options.period
        assert period_s is not None  # the scenario's check
        least = sim.scenario.spec.faults.min_reports
        while not self._stopped:
            chosen = self._draw(training.clients_per_round)
            if chosen:
                self._begin(chosen)
            yield env.timeout(period_s)
            if len(self.buffer) >= least:
                taken, self.buffer, status = self.buffer, [], "ok"
            else:  # carried into the next round, staler
                taken, status = [], f"too few reports ({len(self.buffer)}, at least {least} needed)"
            yield from self._version(taken, env.now, status)

    def _version(self, taken: list[Arrival], collect_end: float, status: str) -> Generator:
        """Apply ``taken`` (nothing, if empty) as the next version and record its window."""
        sim = self.sim
        server_s, accuracy = 0.0, None
        if taken:
            weights = [self.options.staleness.weight(a.staleness) for a in taken]
            if self.mode == "async":
                mixing = self.options.mixing if self.options.mixing is not None else 0.6
                coefficients, against_base = (mixing * weights[0],), False
            else:
                step = self.options.server_learning_rate or 1.0
                samples = [a.outcome.result.update.num_samples for a in taken]
                shares = [n / sum(samples) for n in samples]
                coefficients, against_base = tuple(step * p * w for p, w in zip(shares, weights, strict=True)), True
            updates = [a.outcome.result.update for a in taken]
            step_of = Mixing(coefficients, against_base, first_ranges=not self._applied_any)
            self._applied_any = True
            server_s, accuracy = yield from sim.server.aggregate(updates, step_of)
        self.version += 1
        sim.runtime.version = self.version
        if sim.is_last(self.version):
            yield from self._end_turns()
        v, now = self.version, sim.env.now
        phases = sim.phases[self.window_first_phase :]
        applied = [(a.outcome.result.train_loss, a.staleness) for a in taken]
        times = RoundTimes(self.window_start_s, collect_end, now, server_s)
        sim.rounds.append(
            version_record(v, times, sim.scenario.clients, self.dispatched, applied, self.turns_idle_s, phases, status)
        )
        sim._unsettled.append((len(sim.rounds) - 1, accuracy))
        reports = [self._report(a.outcome, True) for a in taken] + [self._report(o, False) for o in self.lost]
        decided = time.perf_counter()
        sim.policy.observe(reports)
        sim._policy_s += time.perf_counter() - decided
        self.window_start_s, self.window_first_phase = now, len(sim.phases)
        self.dispatched, self.turns_idle_s, self.lost = [], [], []
        self.version_done(v).succeed()

    def _end_turns(self) -> Generator:
        """The last version is made: cancel the turns still in flight (recorded with it)."""
        self._stopped = True
        for proc in self.in_flight.values():
            proc.interrupt(RUN_ENDED)
        if self.turns:
            yield self.sim.env.all_of(list(self.turns.values()))

    def _report(self, outcome: Outcome, applied: bool) -> ClientReport:
        result = outcome.result
        return ClientReport(
            outcome.client_id,
            self.version,
            outcome.strategy,
            applied,
            self.sim.world.infos[outcome.client_id].num_samples,
            result.train_loss if result else None,
            result.divergence if result else None,
            result.deployment_gap if result else None,
        )
