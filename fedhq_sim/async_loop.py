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
from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import simpy

from fedhq_sim.aggregation_modes import buffer_size, concurrency
from fedhq_sim.clock import LAST, late_timeout
from fedhq_sim.components import RUN_ENDED, Client, Outcome, Runtime, Server
from fedhq_sim.errors import SimulationError
from fedhq_sim.executors import Pending
from fedhq_sim.faults import Corruption, draw
from fedhq_sim.idle_pool import IdlePool
from fedhq_sim.policies import Policy, RoundContext
from fedhq_sim.quant.strategy import Strategy
from fedhq_sim.recorder import RoundTimes, version_record
from fedhq_sim.records import PhaseRecord, RoundRecord
from fedhq_sim.round_work import RoundWork, turn_seed
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
    """An update that reached the server, and the model version its turn began from."""

    outcome: Outcome
    base: int


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
        self.version = 0  # records made
        self.model_version = 0  # versions that changed the model (staleness counts these)
        self.busy: set[int] = set()
        self.idle = IdlePool(simulation.eligible)
        self.held: list[int] = []  # clients whose turn ended as it began: back at the next version
        self.turns_of: Counter[int] = Counter()  # each client's turns so far (its seeds' stream)
        self.bases: dict[int, int] = {}  # the model version each turn in flight began from
        self.buffer: list[Arrival] = []
        self.lost: list[Outcome] = []  # turns that ended without an update since the last version
        self.dispatched: list[tuple[int, Strategy]] = []  # turns begun since the last version
        self.turns_idle_s: list[tuple[int, float]] = []  # turns ended since the last version
        self.in_flight: dict[int, simpy.Process] = {}  # each busy client's own process
        self.turns: dict[int, simpy.Process] = {}  # the processes watching them
        self.window_start_s, self.window_first_phase = 0.0, 0
        self.versions: dict[int, simpy.Event] = {}
        self._arrival: simpy.Event | None = None
        self._last_arrival_s = 0.0
        self._busy_since = 0.0  # when the last spell with turns in flight began
        self._started: simpy.Event | None = None  # a turn began after a spell with none
        self._wake_at = math.inf  # when a refill is already scheduled for (availability)
        self._stopped = False
        self._applying_now = False  # the server is replacing the model: new turns wait for it

    def start(self) -> None:
        """Begin the server's processes (at the clock's start)."""
        env = self.sim.env
        self.sim.runtime.bases = self.bases
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
        """Begin turns for ``chosen`` clients from the current model. Each turn has its own
        training seed and fault draws (a client's n-th turn), so a client drawn again
        before the model changes trains anew instead of repeating its update."""
        sim = self.sim
        spec = sim.scenario.spec
        r = self.version + 1
        decided = time.perf_counter()
        assignment = sim.policy.assign(RoundContext(r, tuple(chosen)))
        sim._policy_s += time.perf_counter() - decided
        for cid in chosen:
            self.turns_of[cid] += 1
        able = {cid: assignment[cid] for cid in chosen if assignment[cid].label in sim.world.able[cid]}
        model_nbytes = sim.work.dispatch(able, {cid: turn_seed(spec.seed, cid, self.turns_of[cid]) for cid in able})
        if sim._injects_faults:
            pending = {i: s for i, s in sim.scenario.scheduled_crashes.items() if i not in sim._crashes_fired}
            for cid in chosen:
                turn = self.turns_of[cid]
                faults, fired = draw((cid,), sim.scenario.crash_rules, pending, sim._corruptions, r, spec.seed, turn)
                sim.runtime.faults.update(faults)
                sim._crashes_fired.update(fired)
                for index in fired:
                    pending.pop(index)
        limit_s = spec.training.round_deadline
        if not self.busy:
            self._busy_since = sim.env.now
            if self._started is not None and not self._started.triggered:
                self._started.succeed()
        for cid in chosen:
            self.busy.add(cid)  # drawn from the idle pool already
            self.bases[cid] = self.model_version
            self.dispatched.append((cid, assignment[cid]))
            routes = (sim.world.topology.downlink_routes[cid], sim.world.topology.uplink_routes[cid])
            proc = sim.clients[cid].start(r, assignment[cid], model_nbytes, routes, sim.env.now + limit_s)
            self.in_flight[cid] = proc
            self.turns[cid] = sim.env.process(self._turn(cid, proc))

    def _turn(self, cid: int, proc: simpy.Process) -> Generator:
        """Watch one client's turn: dropped if it outlasts ``round_deadline``; its update
        goes to the buffer on arrival."""
        sim, env = self.sim, self.sim.env
        began, computed_s = env.now, sim.runtime.recorder.computed_s[cid]
        yield proc | late_timeout(env, sim.scenario.spec.training.round_deadline)
        if proc.is_alive:
            proc.interrupt(TURN_DEADLINE)
        outcome: Outcome = yield proc
        sim.runtime.faults.pop(cid, None)
        sim.work.forget(cid)  # a turn that ended before its local work leaves none behind
        base = self.bases.pop(cid)
        del self.in_flight[cid], self.turns[cid]
        self.turns_idle_s.append((cid, env.now - began - (sim.runtime.recorder.computed_s[cid] - computed_s)))
        if outcome.result is not None:
            self.buffer.append(Arrival(outcome, base))
            self._last_arrival_s = env.now
            self._wake()
            if self.mode == "async":
                return  # FedAsync: the slot is refilled once this update is applied
        else:
            self.lost.append(outcome)
        self.busy.discard(cid)
        if env.now == began:  # unable, or offline at the start: drawn again, it would end again now
            self.held.append(cid)
        else:
            self.idle.add(cid)
        if not self.busy and not self.held:
            self._wake()  # no one at work now: the wait for a version is no quiet spell any more
        if self.mode != "semi-sync" and len(self.buffer) < self.buffer_size:
            self._refill()  # else once the version this arrival completes is applied

    def _wake(self) -> None:
        """Have the applying loop look again (an arrival, or no turn left in flight)."""
        if self._arrival is not None and not self._arrival.triggered:
            self._arrival.succeed()

    def _draw(self, n: int) -> list[int]:
        """Up to ``n`` clients drawn from the idle, available ones, uniformly at random."""
        now, availability = self.sim.env.now, self.sim.scenario.availability
        return self.idle.draw(self.sim.rng["selection"], n, lambda c: availability.available(c, now))

    def _refill(self) -> None:
        """Give every free slot to a client drawn from the idle, available ones; if too few
        are available, try again when the next one comes on."""
        if self._stopped or self._applying_now or self.mode == "semi-sync":  # semi-sync draws at rounds' starts
            return
        free = self.slots - len(self.busy)
        if free <= 0:
            return
        chosen = self._draw(free)
        if chosen:
            self._begin(chosen)
        if len(chosen) < free:
            self._wake_for_availability()

    def _next_available(self) -> float:
        """When the next idle client is on (now, if one is; inf: never)."""
        idle = self.idle.items
        return self.sim.scenario.availability.next_available(idle, self.sim.env.now) if idle else math.inf

    def _never_available(self) -> bool:
        return self._next_available() == math.inf

    def _wake_for_availability(self) -> None:
        """Refill when the next idle client comes on; none ever, and none at work: an error."""
        now, at = self.sim.env.now, self._next_available()
        if at == math.inf and not self.busy and not self.held:
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
        """FedAsync and FedBuff: apply the buffer at every ``buffer_size``-th arrival. When
        no update arrives for ``round_deadline`` (every turn failing), a version applies
        nothing, so that time and the run go on."""
        env = self.sim.env
        limit_s = self.sim.scenario.spec.training.round_deadline
        while not self._stopped:
            timer: simpy.Event | None = None  # re-armed only when it fires: one per quiet spell
            while len(self.buffer) < self.buffer_size:
                self._arrival = env.event()
                if not self.busy and not self.held:  # no one can train now (availability)
                    self._started = env.event()
                    yield self._arrival | self._started  # the wait is not a quiet spell
                    timer = None
                    continue
                quiet_until = max(self._last_arrival_s, self.window_start_s, self._busy_since) + limit_s
                if timer is None:
                    timer = late_timeout(env, max(quiet_until - env.now, 0.0), LAST)  # after turns' deadlines
                yield self._arrival | timer
                if self._arrival.triggered:  # an arrival, or no turn left: look again
                    continue
                if env.now >= quiet_until:
                    break
                timer = None
            if len(self.buffer) >= self.buffer_size:
                taken, self.buffer, status = self.buffer[: self.buffer_size], self.buffer[self.buffer_size :], "ok"
            else:
                held = f"{len(self.buffer)} of {self.buffer_size}"
                taken, status = [], f"no update arrived for {limit_s:g} s ({held} buffered, kept)"
            yield from self._version(taken, env.now, status)
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
            elif not self.busy and not self.held and self._never_available():
                now = env.now
                raise SimulationError(f"round {self.version + 1}: no client is available at {now:.1f} s or later")
            yield env.timeout(period_s)
            if len(self.buffer) >= least:
                taken, self.buffer, status = self.buffer, [], "ok"
            else:  # carried into the next round
                taken, status = [], f"too few reports ({len(self.buffer)}, at least {least} needed)"
            yield from self._version(taken, env.now, status)

    def _version(self, taken: list[Arrival], collect_end: float, status: str) -> Generator:
        """Apply ``taken`` (nothing, if empty) as the next version and record its window.
        Each update is weighted by its staleness now, when it is applied."""
        sim = self.sim
        server_s, accuracy = 0.0, None
        staleness = [self.model_version - a.base for a in taken]
        if taken:
            self._applying_now = True
            weights = [self.options.staleness.weight(tau) for tau in staleness]
            if self.mode == "async":
                coefficients, against_base = (self.options.mixing * weights[0],), False
            else:
                step = self.options.server_learning_rate
                samples = [a.outcome.result.update.num_samples for a in taken]
                shares = [n / sum(samples) for n in samples]
                coefficients, against_base = tuple(step * p * w for p, w in zip(shares, weights, strict=True)), True
            updates = [a.outcome.result.update for a in taken]
            step_of = Mixing(coefficients, against_base, first_ranges=self.model_version == 0)
            server_s, accuracy = yield from sim.server.aggregate(updates, step_of)
            self.model_version += 1
            sim.runtime.model_version = self.model_version
            self._applying_now = False
        self.version += 1
        if sim.is_last(self.version):
            yield from self._end_turns()
        v, now = self.version, sim.env.now
        phases = sim.phases[self.window_first_phase :]
        applied = [(a.outcome.result.train_loss, tau) for a, tau in zip(taken, staleness, strict=True)]
        times = RoundTimes(self.window_start_s, collect_end, now, server_s)
        sim.rounds.append(
            version_record(v, times, sim.scenario.clients, self.dispatched, applied, self.turns_idle_s, phases, status)
        )
        sim._unsettled.append((len(sim.rounds) - 1, accuracy))
        infos = sim.world.infos
        reports = [a.outcome.report(v, infos[a.outcome.client_id].num_samples, True) for a in taken]
        reports += [o.report(v, infos[o.client_id].num_samples, False) for o in self.lost]
        decided = time.perf_counter()
        sim.policy.observe(reports)
        sim._policy_s += time.perf_counter() - decided
        self.window_start_s, self.window_first_phase = now, len(sim.phases)
        self.dispatched, self.turns_idle_s, self.lost = [], [], []
        for cid in self.held:
            self.idle.add(cid)
        self.held = []
        self.version_done(v).succeed()

    def _end_turns(self) -> Generator:
        """The last version is made: cancel the turns still in flight (recorded with it)."""
        self._stopped = True
        for proc in self.in_flight.values():
            if proc.is_alive:
                proc.interrupt(RUN_ENDED)
        if self.turns:
            yield self.sim.env.all_of(list(self.turns.values()))
