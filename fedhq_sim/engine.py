"""The simulation: synchronous FL rounds on a SimPy clock (design.md, "Semantics").

The world is built once (:func:`fedhq_sim.world.build_world`); the clients, gateways and
server are components acting on the clock (:mod:`fedhq_sim.components`). What remains here
is the loop: per round the server selects clients, the policy assigns strategies, one
process per selected client (or per aggregating site) is spawned, and the round's
collection ends when every one has reported, when ``clients_per_round`` have in an
over-selected round (the rest cancelled), or at the deadline, whichever comes first; late
clients are interrupted, leave the network, and are recorded as dropped. The server
then aggregates and evaluates, and the round's phases become its record
(:func:`fedhq_sim.recorder.round_record`). Outages, checkpoints and the host's timings are
kept here too. Host time never enters simulated results. The asynchronous modes
(``training.mode``) run their turns and versions on the same components and clock
(:mod:`fedhq_sim.async_loop`); this loop then only waits for each version.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import simpy
import torch

from fedhq_sim.async_loop import AsynchronousLoop
from fedhq_sim.clock import pending_events, schedule_at
from fedhq_sim.components import CANCELLED, Client, Outcome, Quorum, Runtime, Server, SiteAggregator, SiteOutcome
from fedhq_sim.errors import InputError, SimulationError
from fedhq_sim.executors import Pending, WorkExecutor
from fedhq_sim.faults import draw
from fedhq_sim.network import FlowNetwork, LinkSample
from fedhq_sim.policies import Policy, RoundContext
from fedhq_sim.recorder import Recorder, RoundTimes, round_record
from fedhq_sim.records import PhaseRecord, RoundRecord
from fedhq_sim.round_work import ExecutedWork, ProfiledWork, RoundWork
from fedhq_sim.scenario import LoadedScenario, Outage
from fedhq_sim.world import World, build_world, streams


@dataclass(frozen=True)
class RunResult:
    """Everything a run produced, as flat records."""

    rounds: list[RoundRecord]
    phases: list[PhaseRecord]


@dataclass(frozen=True)
class HostTiming:
    """Host seconds of a round and of its policy decisions (assign and observe): measured on
    this machine, so kept out of the simulated results and written to run.json only."""

    round: int
    host_s: float
    policy_s: float


RoundCallback = Callable[[RoundRecord, float], None]


class Simulation:
    """One run of a loaded scenario.

    Parameters
    ----------
    scenario
        The loaded scenario.
    executor
        Where the real client work runs (default: this process); full mode only.
    timing_only
        Price every computation from its work profile instead of running it: the same
        simulated timings as a full run, no accuracy (see :mod:`fedhq_sim.round_work`).
    """

    def __init__(
        self, scenario: LoadedScenario, executor: WorkExecutor | None = None, *, timing_only: bool = False
    ) -> None:
        spec = scenario.spec
        rng = streams(spec.seed)
        world = build_world(scenario, rng["partition"], timing_only=timing_only)
        work: RoundWork = (
            ProfiledWork(world.data, world.local, spec.seed, spec.deployment)
            if timing_only
            else ExecutedWork(world.data, world.local, spec.seed, spec.deployment, executor)
        )
        self._begin(world, work, rng)

    @classmethod
    def on(cls, world: World, work: RoundWork) -> Simulation:
        """A simulation of ``world`` whose rounds' work is ``work``: a stand-in with fixed
        charges lets the engine's tests check its clock without any real computation."""
        simulation = cls.__new__(cls)
        simulation._begin(world, work, streams(world.scenario.spec.seed))
        return simulation

    def _begin(self, world: World, work: RoundWork, rng: dict[str, np.random.Generator]) -> None:
        scenario = world.scenario
        spec = scenario.spec
        self.scenario, self.world, self.work, self.rng = scenario, world, work, rng
        choice = world.policy_choice
        self.policy: Policy = choice.policy_class(choice.options, world.infos, rng["policy"])
        self.eligible = tuple(
            c.client_id
            for c in scenario.clients
            if any(s.label in world.able[c.client_id] for s in self.policy.strategies_for(c.client_id))
        )
        if not self.eligible:
            reasons = [f.reason for f in world.feasibility if not f.able] or ["the policy assigns nothing they can run"]
            raise InputError(scenario.path, "sites", f"no client can take part: {reasons[0]}")
        self.rounds: list[RoundRecord] = []
        self.phases: list[PhaseRecord] = []
        self._wire(simpy.Environment())
        self._outage_phase = ["waiting"] * len(scenario.outages)  # then "down", then "done"
        self._outage_procs = [self.env.process(self._outage(i, o)) for i, o in enumerate(scenario.outages)]
        self.host_timing: list[HostTiming] = []
        self._policy_s = 0.0
        self._unsettled: list[tuple[int, Pending | None]] = []  # rounds whose accuracy is being computed
        faults = spec.faults
        self._corruptions = tuple((c.kind, c.probability) for c in faults.corrupt_updates)
        self._injects_faults = bool(scenario.crash_rules or scenario.scheduled_crashes or self._corruptions)
        self._crashes_fired: set[int] = set()  # scheduled crashes that happened (by index)
        self._next_round = 1
        self.asynchronous = AsynchronousLoop(self) if spec.training.mode != "sync" else None
        self._replay: tuple[int, list[RoundRecord], list[PhaseRecord], list[LinkSample]] | None = None
        """An asynchronous run being resumed: the checkpoint's version and the records its
        files hold, which the replay from the start must give again."""
        self.checkpointing = False
        """Keep the state at each round's end until :meth:`checkpoint` takes it (the CLI's run does)."""
        self._snapshots: dict[int, dict[str, Any]] = {}

    def _wire(self, env: simpy.Environment) -> None:
        """The clock, the network and the components acting on them (again on a restore,
        which starts a new clock)."""
        self.env = env
        self.network = FlowNetwork(
            env,
            self.world.topology.links,
            self.rng["network"],
            monitored=self.world.topology.shared_links,
            stall_timeout_s=self.scenario.spec.network.stall_timeout,
        )
        self.runtime = Runtime(env, self.network, Recorder(env, self.phases), self.work, self.world)
        self.clients = [Client(self.runtime, spec) for spec in self.scenario.clients]
        self.sites = {
            site: SiteAggregator(self.runtime, gateway, self.clients)
            for site, gateway in self.world.aggregators.items()
        }
        self.server = Server(self.runtime, self.scenario.server_device)

    def policy_share_max(self) -> float:
        """The largest share of a round's host time spent in the policy's decisions so far."""
        return max((t.policy_s / t.host_s for t in self.host_timing if t.host_s > 0), default=0.0)

    def _outage(self, index: int, outage: Outage, resumed: simpy.Event | None = None) -> Generator:
        """Take both directions of a physical link down for the outage's window.

        Windows on one link may overlap: the link comes back when the last one ends. A
        resumed run hands in the event its next step waits for (see :meth:`restore`).
        """
        a, b = outage.nodes
        if self._outage_phase[index] == "waiting":
            yield resumed if resumed is not None else self.env.timeout(outage.start_s)
            resumed = None
            self._outage_phase[index] = "down"
            for link in ((a, b), (b, a)):
                self.network.set_down(link, True)
        yield resumed if resumed is not None else self.env.timeout(outage.end_s - outage.start_s)
        self._outage_phase[index] = "done"
        still_down = (
            o.nodes == outage.nodes and p == "down"
            for o, p in zip(self.scenario.outages, self._outage_phase, strict=True)
        )
        if not any(still_down):
            for link in ((a, b), (b, a)):
                self.network.set_down(link, False)

    def _round(self, r: int) -> Generator:
        """Select, assign, spawn the clients' and sites' processes, wait for them until the
        deadline, aggregate what arrived, and record the round."""
        spec = self.scenario.spec
        start = self.env.now
        first_phase = len(self.phases)
        availability = self.scenario.availability
        ready_at = availability.next_available(self.eligible, self.env.now)
        if ready_at == math.inf:
            raise SimulationError(f"round {r}: no client is available at {self.env.now:.1f} s or later")
        yield self.env.timeout(ready_at - self.env.now)  # the server waits for someone to be on
        candidates = [cid for cid in self.eligible if availability.available(cid, self.env.now)]
        wanted = spec.training.clients_per_round
        n_select = min(math.ceil(round(wanted * spec.training.over_selection, 9)), len(candidates))
        selected = tuple(sorted(int(i) for i in self.rng["selection"].choice(candidates, n_select, replace=False)))
        decided = time.perf_counter()
        assignment = self.policy.assign(RoundContext(r, selected))
        self._policy_s += time.perf_counter() - decided
        able = {cid: assignment[cid] for cid in selected if assignment[cid].label in self.world.able[cid]}
        model_nbytes = self.work.begin_round(r, able)
        self.runtime.faults = {}
        if self._injects_faults:
            pending = {i: s for i, s in self.scenario.scheduled_crashes.items() if i not in self._crashes_fired}
            faults, fired = draw(selected, self.scenario.crash_rules, pending, self._corruptions, r, spec.seed)
            self.runtime.faults = faults
            self._crashes_fired.update(fired)
        deadline_at = self.env.now + spec.training.round_deadline
        quorum = Quorum(wanted, self.env.event()) if n_select > wanted else None
        self.runtime.quorum = quorum
        by_site: dict[str, list[int]] = {}
        procs = []
        for cid in selected:
            site = self.scenario.clients[cid].site
            if site in self.sites:
                by_site.setdefault(site, []).append(cid)
            else:
                routes = (self.world.topology.downlink_routes[cid], self.world.topology.uplink_routes[cid])
                procs.append(self.clients[cid].start(r, assignment[cid], model_nbytes, routes, deadline_at))
        direct = list(procs)
        for site, members in by_site.items():
            procs.append(self.env.process(self.sites[site].round(r, members, assignment, model_nbytes, deadline_at)))
        collected = self.env.all_of(procs) | self.env.timeout(spec.training.round_deadline)
        yield collected if quorum is None else collected | quorum.enough
        if quorum is not None and quorum.enough.triggered and self.env.now < deadline_at:
            yield from self._close_early(direct, procs[len(direct) :], deadline_at)
        collect_end = self.env.now
        # The deadline is inclusive: work that ends at this very instant (an upload whose last
        # byte arrives now) is processed before the late clients are interrupted.
        yield from self._finish_this_instant(procs)
        for proc in procs:
            if proc.is_alive:
                proc.interrupt("round deadline")
        yield self.env.all_of(procs)  # the interrupted processes record their drop at this instant

        values = [p.value for p in procs]
        reached = [v for v in values if isinstance(v, Outcome)]
        sites = [v for v in values if isinstance(v, SiteOutcome)]
        updates = [o.result.update for o in reached if o.result is not None]
        updates += [s.update for s in sites if s.update is not None]
        # A member's update reached the server only if its aggregator's did.
        outcomes = reached + [
            o if s.update else Outcome(o.client_id, o.strategy, None) for s in sites for o in s.members
        ]
        outcomes.sort(key=lambda o: o.client_id)
        reported = [o for o in outcomes if o.result is not None]
        server_s = 0.0
        accuracy: Pending | None = None  # no update reached the server: the model is unchanged
        least = spec.faults.min_reports
        status = "ok" if len(reported) >= least else f"too few reports ({len(reported)}, at least {least} needed)"
        if updates and status == "ok":
            server_s, accuracy = yield from self.server.aggregate(updates)

        self.rounds.append(
            round_record(
                r,
                RoundTimes(start, collect_end, self.env.now, server_s),
                self.scenario.clients,
                selected,
                [(o.client_id, o.strategy) for o in outcomes],
                [o.result.train_loss for o in reported],
                {o.client_id for s in sites if s.gateway_failed for o in s.members},
                self.phases[first_phase:],
                status,
            )
        )
        self._unsettled.append((len(self.rounds) - 1, accuracy))
        decided = time.perf_counter()
        self.policy.observe(
            [o.report(r, self.world.infos[o.client_id].num_samples, o.result is not None) for o in outcomes]
        )
        self._policy_s += time.perf_counter() - decided

    def _finish_this_instant(self, procs: list[simpy.Process]) -> Generator:
        """Let what is due at this very instant happen (an upload whose last byte arrives now)
        before the processes still at work are interrupted."""
        while any(p.is_alive for p in procs) and self.env.peek() == self.env.now:
            yield self.env.timeout(0)

    def _close_early(self, direct: list[simpy.Process], gateways: list[simpy.Process], deadline_at: float) -> Generator:
        """An over-selected round has its reports: cancel the direct clients still at work
        (after what ends at this very instant), and wait, until the deadline at most, for the
        gateways, which stop collecting at once and forward what they hold."""
        yield from self._finish_this_instant(direct)
        for proc in direct:
            if proc.is_alive:
                proc.interrupt(CANCELLED)
        forwarding = [p for p in gateways if p.is_alive]
        if forwarding:
            yield self.env.all_of(forwarding) | self.env.timeout(deadline_at - self.env.now)

    def _initial_round(self) -> RoundRecord:
        fp32_acc, int8_acc = self.work.initial_accuracy()
        zeros = {f.name: 0.0 if f.type == "float" else 0 for f in fields(RoundRecord) if f.type in ("int", "float")}
        return RoundRecord(
            **zeros | {"train_loss": float("nan"), "fp32_accuracy": fp32_acc, "deployed_accuracy": int8_acc}
        )

    def _settle(self, *, wait: bool) -> list[int]:
        """Fill in, in round order, the accuracy of the rounds whose evaluation is done (every
        one, with ``wait``); return their indices. A round whose updates all got lost keeps
        the accuracy of the round before."""
        settled = []
        while self._unsettled:
            index, accuracy = self._unsettled[0]
            if accuracy is not None and not wait and not accuracy.done():
                break
            if accuracy is None:
                before = self.rounds[index - 1]
                fp32, deployed = before.fp32_accuracy, before.deployed_accuracy
            else:
                fp32, deployed = accuracy.result()
            self.rounds[index] = replace(self.rounds[index], fp32_accuracy=fp32, deployed_accuracy=deployed)
            self._unsettled.pop(0)
            settled.append(index)
        return settled

    def _snapshot(self, r: int) -> dict[str, Any]:
        """The state at the end of round ``r``: everything a resumed run needs besides the
        records, which its files hold (see :mod:`fedhq_sim.checkpoint`). An asynchronous
        run has turns in flight at every version, mid-transfer and mid-computation: its
        resume replays the run from the start instead (see :meth:`restore`)."""
        counts = {"rounds": len(self.rounds), "phases": len(self.phases), "samples": len(self.network.samples)}
        counts["last"] = self.is_last(r)
        if self.asynchronous is not None:
            return {"round": r, "clock_s": self.env.now, "replay": True, **counts}
        waiting = {id(p.target): i for i, p in enumerate(self._outage_procs) if p.is_alive}
        return {
            "round": r,
            "clock_s": self.env.now,
            # Every pending event but an outage's is a timer whose time has no more effect
            # (a deadline met, a superseded network wake-up): it goes back as a placeholder.
            "pending": [(t, priority, waiting.get(id(e), -1)) for t, priority, e in pending_events(self.env)],
            "outages": list(self._outage_phase),
            "rng": {name: generator.bit_generator.state for name, generator in self.rng.items()},
            "network": self.network.state_dict(),
            "policy": self.policy.state_dict(),
            "work": self.work.state_dict(),
            "crashes_fired": sorted(self._crashes_fired),
            **counts,
        }

    def checkpoint(self, r: int) -> dict[str, Any]:
        """The state at the end of round ``r`` (with :attr:`checkpointing`), once its record is complete."""
        return self._snapshots.pop(r)

    def restore(
        self, state: dict[str, Any], rounds: list[RoundRecord], phases: list[PhaseRecord], samples: list[LinkSample]
    ) -> None:
        """Continue from a checkpoint of this scenario: after :meth:`run`, the records are those
        of a run that was never interrupted. The clock goes back with every event the
        interrupted run still had pending, at its exact time and in its order.

        An asynchronous run is replayed from the start instead, every computation done
        again (its state at a version includes turns in flight); the replay must give the
        records the files hold, or it stops with an error, and it goes on from there."""
        if state.get("replay"):
            self._replay = (state["round"], list(rounds), list(phases), list(samples))
            return
        self.rounds, self.phases = list(rounds), list(phases)
        self._wire(simpy.Environment(initial_time=state["clock_s"]))
        self.network.load_state_dict(state["network"], samples)
        for name, generator in self.rng.items():
            generator.bit_generator.state = state["rng"][name]
        self.policy.load_state_dict(state["policy"])
        self.work.load_state_dict(state["work"])
        self._outage_phase = list(state["outages"])
        self._crashes_fired = set(state["crashes_fired"])
        outages = self.scenario.outages
        for time_s, priority, index in state["pending"]:
            event = schedule_at(self.env, time_s, priority)
            if index >= 0:
                self._outage_procs[index] = self.env.process(self._outage(index, outages[index], event))
        self.host_timing = [HostTiming(rec.round, math.nan, math.nan) for rec in rounds[1:]]  # not measured here
        self._next_round = state["round"] + 1

    def is_last(self, r: int) -> bool:
        """Whether the run ends with round (version) ``r``, which has just ended: its last,
        or the first to end at or after ``training.time_limit``."""
        training = self.scenario.spec.training
        return r >= training.rounds or (training.time_limit is not None and self.env.now >= training.time_limit)

    def _check_replay(self, index: int) -> None:
        """A replayed version must be the one the stopped run wrote (with its phases, once
        the checkpoint's last version is reached)."""
        assert self._replay is not None
        last, rounds, phases, samples = self._replay
        if not _same(self.rounds[index], rounds[index]):
            raise SimulationError(f"resuming: the replay's version {index} differs from the one the stopped run wrote")
        if index == last:
            replayed = self.phases[: len(phases)]
            if len(replayed) < len(phases) or any(not _same(a, b) for a, b in zip(replayed, phases, strict=True)):
                raise SimulationError(f"resuming: the replay's events up to version {last} differ from the files'")
            if self.network.samples[: len(samples)] != samples:
                raise SimulationError(f"resuming: the replay's link samples up to version {last} differ")
            self.host_timing[:last] = [HostTiming(t.round, math.nan, math.nan) for t in self.host_timing[:last]]

    def run(self, on_round: RoundCallback | None = None) -> RunResult:
        """Simulate every round; ``on_round(record, host_seconds)`` is called for each once its
        record is complete: right after the round, or, where the evaluation runs beside the
        next round's client work (a pool, Ray), after that next round."""

        def report(indices: list[int]) -> None:
            for index in indices:
                if self._replay is not None and index <= self._replay[0]:
                    self._check_replay(index)
                elif on_round is not None:
                    on_round(self.rounds[index], self.host_timing[index - 1].host_s)

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one thread: float reductions then do not depend on the host's core count
        try:
            if self._next_round == 1:
                self.rounds.append(self._initial_round())
            restored = self._next_round - 1  # a run stopped after its last round has none to run
            end = 0 if restored and self.is_last(restored) else self.scenario.spec.training.rounds + 1
            for r in range(self._next_round, end):
                host_start = time.perf_counter()
                self._policy_s = 0.0
                # Run until this round's process ends; stale timers (a deadline that was not
                # needed) stay queued and fire later without effect.
                with _collection_after_round():
                    if self.asynchronous is None:
                        self.env.run(until=self.env.process(self._round(r)))
                    else:
                        if r == 1:
                            self.asynchronous.start()
                        self.env.run(until=self.asynchronous.version_done(r))
                    if self.checkpointing:
                        self._snapshots[r] = self._snapshot(r)
                host_s = time.perf_counter() - host_start
                self.host_timing.append(HostTiming(r, host_s, self._policy_s))
                if self.is_last(r):
                    break
                report(self._settle(wait=False))
            report(self._settle(wait=True))
        finally:
            gc.unfreeze()  # collectable again once the run is no longer referenced
            torch.set_num_threads(threads)
        return RunResult(list(self.rounds), list(self.phases))


def _same(a: object, b: object) -> bool:
    """Records equal field by field, NaN equal to NaN (a round without accuracy)."""
    left = a._asdict() if hasattr(a, "_asdict") else vars(a)
    right = b._asdict() if hasattr(b, "_asdict") else vars(b)
    return left.keys() == right.keys() and all(
        x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
        for x, y in zip(left.values(), right.values(), strict=True)
    )


@contextmanager
def _collection_after_round() -> Iterator[None]:
    """Run a round without the cycle collector, then collect and freeze what it kept.

    The collector's passes over what a large run keeps (every record and link sample), and
    within a round over the round's processes, flows and records, made a large round grow
    faster than N log N in its clients (``bench/timing_scale.py`` measures the growth). A
    round leaves little cyclic garbage, so it is collected when the round ends, and the
    survivors are frozen out of later passes (unfrozen after the run); ``bench/long_run.py``
    and ``tests/test_long_run.py`` check that memory grows only by the records kept.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
    gc.collect()
    gc.freeze()


def simulate(
    scenario: LoadedScenario, on_round: RoundCallback | None = None, executor: WorkExecutor | None = None
) -> RunResult:
    """Run ``scenario`` from start to end (client work on ``executor``; default: this process)."""
    return Simulation(scenario, executor).run(on_round)
