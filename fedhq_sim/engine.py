"""The simulation: synchronous FL rounds on a SimPy clock (design.md, "Semantics").

Per round the server selects clients, the policy assigns strategies, and one process per
selected client downloads the global model over its route, does its local work (charged on
its device profile), and uploads its update. The round's collection ends when every client
has reported or at the deadline, whichever comes first; late clients are interrupted, leave
the network, and are recorded as dropped. The server then aggregates and evaluates, charged
on its own profile. Where that work comes from, executed for real or priced from its
profiles in timing-only mode, is the :class:`~fedhq_sim.round_work.RoundWork`'s business;
the engine charges the same either way. Host time never enters simulated results.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import simpy
import torch

from fedhq_sim.analysis import analyze
from fedhq_sim.charge import charge_seconds, compute_joules
from fedhq_sim.clock import pending_events, schedule_at
from fedhq_sim.data import FederatedData, PartitionError, federate
from fedhq_sim.errors import InputError, SimulationError
from fedhq_sim.executors import Pending, WorkExecutor
from fedhq_sim.faults import CRASHED, ClientFaults, draw
from fedhq_sim.feasibility import Feasibility, check_client, payload_bytes, training_step, transfer_floor_s
from fedhq_sim.network import FlowNetwork, LinkSample, TransferStalledError
from fedhq_sim.policies import ClientInfo, ClientReport, Policy, RoundContext
from fedhq_sim.policies.choice import check_timing_only, choose_policy
from fedhq_sim.quant.strategy import FP32, Strategy
from fedhq_sim.records import PhaseRecord, RoundRecord
from fedhq_sim.round_work import ClientResult, ExecutedWork, ProfiledWork, RoundWork
from fedhq_sim.scenario import ClientSpec, LoadedScenario, Outage
from fedhq_sim.server_work import Update
from fedhq_sim.topology import Topology, build_topology
from fedhq_sim.training import LocalConfig
from fedhq_sim.workload import load_data


@dataclass(frozen=True)
class RunResult:
    """Everything a run produced, as flat records."""

    rounds: list[RoundRecord]
    phases: list[PhaseRecord]


@dataclass(frozen=True)
class _Outcome:
    client_id: int
    strategy: Strategy
    result: ClientResult | None


@dataclass(frozen=True)
class _SiteOutcome:
    """An aggregating site's round: its members' outcomes, the one update it sent on, and
    whether its gateway failed (then its members count as failed, whatever they had done)."""

    members: list[_Outcome]
    update: Update | None
    gateway_failed: bool = False


@dataclass(frozen=True)
class HostTiming:
    """Host seconds of a round and of its policy decisions (assign and observe): measured on
    this machine, so kept out of the simulated results and written to run.json only."""

    round: int
    host_s: float
    policy_s: float


RoundCallback = Callable[[RoundRecord, float], None]
OFFLINE = "client offline"  # the interrupt cause of a client whose availability ended
CRASH = "device crashed"  # the interrupt cause of an injected crash
ARRIVED = ("completed", "rejected")  # uploads whose bytes reached the receiver
NO_FAULT = ClientFaults()


def _streams(seed: int) -> dict[str, np.random.Generator]:
    names = ("partition", "selection", "policy", "network")
    children = np.random.SeedSequence(seed).spawn(len(names))
    return {name: np.random.default_rng(child) for name, child in zip(names, children, strict=True)}


def federated_data(scenario: LoadedScenario, rng: np.random.Generator | None = None) -> FederatedData:
    """The scenario's data split; a split that cannot satisfy the scenario is an input error.

    ``deployment.server_samples`` are held out whichever deployment runs, so that the clients
    hold the same data under both and the two deployments compare on the same training; when
    the clients' ranges set the deployment, the server is given none of them.
    """
    d, deployment = scenario.spec.data, scenario.spec.deployment
    try:
        data = federate(
            load_data(scenario.data_source).samples,
            n_clients=len(scenario.clients),
            alpha=d.dirichlet_alpha,
            test_fraction=d.test_fraction,
            server_calibration=deployment.server_samples,
            min_client_samples=d.min_client_samples,
            rng=rng if rng is not None else _streams(scenario.spec.seed)["partition"],
        )
    except PartitionError as error:
        raise InputError(scenario.path, "data", str(error)) from None
    if deployment.from_clients:
        data = dataclasses.replace(data, server_calibration=data.server_calibration.subset(np.arange(0)))
    return data


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
        self.scenario = scenario
        self.policy_choice = choose_policy(scenario)
        if timing_only:
            check_timing_only(scenario, self.policy_choice)
        self.env = simpy.Environment()
        self.rng = _streams(spec.seed)
        self.data = federated_data(scenario, self.rng["partition"])
        self.topology: Topology = build_topology(scenario)
        self.network = self._new_network()
        self._aggregation_s: dict[tuple[str, int], float] = {}
        self._outage_phase = ["waiting"] * len(scenario.outages)  # then "down", then "done"
        self._outage_procs = [self.env.process(self._outage(i, o)) for i, o in enumerate(scenario.outages)]
        self.feasibility = self._check_clients()
        # Aggregating gateways appear in the events as clients with negative ids.
        site_index = {site.name: i for i, site in enumerate(spec.sites)}
        self.aggregators = {
            site: ClientSpec(-1 - site_index[site], f"{site}/aggregator", site, device, scenario.backhauls[site])
            for site, device in scenario.aggregators.items()
        }
        able: dict[int, set[str]] = {c.client_id: set() for c in scenario.clients}
        for row in self.feasibility:  # one pass: building a fleet of thousands stays linear
            if row.able:
                able[row.client_id].add(row.strategy)
        self.able = {cid: frozenset(labels) for cid, labels in able.items()}
        t = spec.training
        self.local = LocalConfig(
            scenario.model,
            self.data.num_classes,
            t.local_epochs,
            t.batch_size,
            t.learning_rate,
            t.calibration_samples,
            self.data.input_shape,
            t.local_steps,
            self.policy_choice.policy_class.observes_deployment_gap,
            self.range_bits,
        )
        self.analysis = analyze(scenario, self.data, self.topology, self.local, self._candidate_strategies())
        infos = [
            ClientInfo(
                c.client_id,
                c.site,
                c.device.name,
                c.link.name,
                len(self.data.clients[c.client_id]),
                self.able[c.client_id],
                self.analysis[c.client_id],
            )
            for c in scenario.clients
        ]
        self.policy: Policy = self.policy_choice.policy_class(self.policy_choice.options, infos, self.rng["policy"])
        self.eligible = tuple(
            c.client_id
            for c in scenario.clients
            if any(s.label in self.able[c.client_id] for s in self.policy.strategies_for(c.client_id))
        )
        if not self.eligible:
            reasons = [f.reason for f in self.feasibility if not f.able] or ["the policy assigns nothing they can run"]
            raise InputError(scenario.path, "sites", f"no client can take part: {reasons[0]}")
        self.work: RoundWork = (
            ProfiledWork(self.data, self.local, spec.seed, spec.deployment)
            if timing_only
            else ExecutedWork(self.data, self.local, spec.seed, spec.deployment, executor)
        )
        self.rounds: list[RoundRecord] = []
        self.phases: list[PhaseRecord] = []
        self.host_timing: list[HostTiming] = []
        self._policy_s = 0.0
        self._unsettled: list[tuple[int, Pending | None]] = []  # rounds whose accuracy is being computed
        self._faults: dict[int, ClientFaults] = {}  # this round's
        faults = spec.faults
        self._corruptions = tuple((c.kind, c.probability) for c in faults.corrupt_updates)
        self._injects_faults = bool(scenario.crash_rules or scenario.scheduled_crashes or self._corruptions)
        self._crashes_fired: set[int] = set()  # scheduled crashes that happened (by index)
        self._next_round = 1
        self.checkpointing = False
        """Keep the state at each round's end until :meth:`checkpoint` takes it (the CLI's run does)."""
        self._snapshots: dict[int, dict[str, Any]] = {}

    def _new_network(self) -> FlowNetwork:
        return FlowNetwork(
            self.env,
            self.topology.links,
            self.rng["network"],
            monitored=self.topology.shared_links,
            stall_timeout_s=self.scenario.spec.network.stall_timeout,
        )

    def policy_share_max(self) -> float:
        """The largest share of a round's host time spent in the policy's decisions so far."""
        return max((t.policy_s / t.host_s for t in self.host_timing if t.host_s > 0), default=0.0)

    def _crash(self, proc: simpy.Process, delay_s: float) -> Generator:
        """An injected crash of a client's device ``delay_s`` from now, if it is still busy."""
        yield self.env.timeout(delay_s)
        if proc.is_alive:
            proc.interrupt(CRASH)

    def _offline_watch(self, proc: simpy.Process, offline_at: float) -> Generator:
        """Fail a client's round when its availability ends before the round does."""
        yield self.env.timeout(offline_at - self.env.now)
        if proc.is_alive:
            proc.interrupt(OFFLINE)

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

    @property
    def range_bits(self) -> int | None:
        """The deployment's width when the clients' updates carry its activation ranges."""
        deployment = self.scenario.spec.deployment
        return deployment.bits if deployment.from_clients else None

    @property
    def quantized_bits(self) -> int:
        """The bit width of the run's quantized strategies and of the deployed model."""
        return self.scenario.spec.deployment.bits

    def _candidate_strategies(self) -> tuple[Strategy, ...]:
        """fp32 and both quantized strategies at the policy's width."""
        return (FP32, Strategy("ptq", self.quantized_bits), Strategy("qat", self.quantized_bits))

    def _check_clients(self) -> list[Feasibility]:
        """Every client against every strategy: memory and link (see :mod:`fedhq_sim.feasibility`)."""
        spec = self.scenario.spec
        sample_shape = tuple(self.data.test.x.shape[1:])
        batch_shape = (spec.training.batch_size, *sample_shape)
        num_classes = self.data.num_classes
        model_nbytes = payload_bytes(self.scenario.model, num_classes, FP32, sample_shape, self.range_bits)
        rows = []
        for client in self.scenario.clients:
            cid = client.client_id
            download_s = transfer_floor_s(self.topology.downlink_routes[cid], self.topology.links, model_nbytes)
            # Full batches only (a partial last batch costs less): the compute time stays a floor.
            n, batch = len(self.data.clients[cid]), spec.training.batch_size
            fixed = spec.training.local_steps
            full_steps = (
                (fixed if n >= batch else 0) if fixed is not None else spec.training.local_epochs * (n // batch)
            )
            for strategy in self._candidate_strategies():
                upload_nbytes = payload_bytes(self.scenario.model, num_classes, strategy, sample_shape, self.range_bits)
                step = training_step(self.scenario.model, num_classes, strategy, batch_shape)
                rows.append(
                    check_client(
                        client,
                        strategy,
                        memory_bytes=step.memory_bytes,
                        download_s=download_s,
                        compute_s=full_steps * charge_seconds(step.work, client.device),
                        upload_s=transfer_floor_s(self.topology.uplink_routes[cid], self.topology.links, upload_nbytes),
                        upload_nbytes=upload_nbytes,
                        deadline_s=spec.training.round_deadline,
                    )
                )
        return rows

    def _reason(self, client_id: int, strategy: Strategy) -> str:
        return next(f.reason for f in self.feasibility if f.client_id == client_id and f.strategy == strategy.label)

    def _record(
        self,
        r: int,
        client: ClientSpec,
        phase: str,
        strategy: Strategy,
        nbytes: int,
        start: float,
        status: str,
        reason: str = "",
    ) -> None:
        seconds = self.env.now - start
        if phase == "compute":
            energy = compute_joules(seconds, client.device) if status != "unable" else 0.0
        else:
            power = client.link.radio_power
            energy = (power.receive if phase == "download" else power.transmit) * seconds
        self.phases.append(
            PhaseRecord(
                r,
                client.client_id,
                client.name,
                client.site,
                client.device.name,
                client.link.name,
                phase,
                strategy.label,
                strategy.bits,
                nbytes,
                float(start),  # SimPy's clock starts at int 0: a row holds floats only
                float(self.env.now),
                status,
                energy,
                reason,
            )
        )

    def _start_client(
        self,
        r: int,
        cid: int,
        strategy: Strategy,
        model_nbytes: int,
        routes: tuple[Sequence, Sequence],
        deadline_at: float,
    ) -> simpy.Process:
        """A client's round as a process, watched for going offline before ``deadline_at``."""
        client = self.scenario.clients[cid]
        proc = self.env.process(self._client_round(r, client, strategy, model_nbytes, *routes))
        available = self.scenario.availability.available(cid, self.env.now)
        offline_at = self.scenario.availability.next_change(cid, self.env.now)
        if available and offline_at < deadline_at:
            self.env.process(self._offline_watch(proc, offline_at))
        return proc

    def _client_round(
        self, r: int, client: ClientSpec, strategy: Strategy, model_nbytes: int, down: Sequence, up: Sequence
    ) -> Generator:
        cid = client.client_id
        if not self.scenario.availability.available(cid, self.env.now):  # went off while waiting
            reason = f"went offline at or before {self.env.now:.3f} s (shift, maintenance or trace)"
            self._record(r, client, "download", strategy, 0, self.env.now, "failed", reason)
            return _Outcome(cid, strategy, None)
        if strategy.label not in self.able[cid]:
            self._record(r, client, "compute", strategy, 0, self.env.now, "unable", self._reason(cid, strategy))
            return _Outcome(cid, strategy, None)
        phase, start, nbytes = "download", self.env.now, model_nbytes
        try:
            yield from self.network.transfer(down, nbytes)
            self._record(r, client, phase, strategy, nbytes, start, "completed")

            phase, start, nbytes = "compute", self.env.now, 0
            result = self.work.client(cid)  # made ready at the round's start (RoundWork.begin_round)
            fault = self._faults.get(cid, NO_FAULT)
            compute_s = charge_seconds(result.work, client.device)
            if fault.crash == "compute":
                yield self.env.timeout(fault.crash_at * compute_s)
                self._record(r, client, phase, strategy, nbytes, start, "failed", CRASHED["compute"])
                return _Outcome(cid, strategy, None)
            yield self.env.timeout(compute_s)
            self._record(r, client, phase, strategy, nbytes, start, "completed")

            phase, start, nbytes = "upload", self.env.now, result.update.nbytes
            if fault.crash == "upload":  # at a fraction of the upload's floor: always before it ends
                delay = fault.crash_at * transfer_floor_s(up, self.topology.links, nbytes)
                self.env.process(self._crash(self.env.active_process, delay))
            yield from self.network.transfer(up, nbytes)
            if fault.corrupt is not None:
                why = self.work.rejection(result.update, fault.corrupt)
                if why is None:  # the check is built to catch every injected corruption
                    raise SimulationError(f"round {r}: {client.name}'s corrupted update passed the server's check")
                reason = f"rejected on arrival: {why} (fault injection: a corrupted update)"
                self._record(r, client, phase, strategy, nbytes, start, "rejected", reason)
                return _Outcome(cid, strategy, None)
            self._record(r, client, phase, strategy, nbytes, start, "completed")
            return _Outcome(cid, strategy, result)
        except simpy.Interrupt as interrupt:
            if interrupt.cause == OFFLINE:
                reason = f"went offline at {self.env.now:.3f} s (shift, maintenance or trace)"
                self._record(r, client, phase, strategy, nbytes, start, "failed", reason)
            elif interrupt.cause == CRASH:
                self._record(r, client, phase, strategy, nbytes, start, "failed", CRASHED[phase])
            else:
                self._record(r, client, phase, strategy, nbytes, start, "dropped")
            return _Outcome(cid, strategy, None)
        except TransferStalledError as error:
            self._record(r, client, phase, strategy, nbytes, start, "failed", str(error))
            return _Outcome(cid, strategy, None)

    def _site_round(
        self,
        r: int,
        site: str,
        members: list[int],
        assignment: dict[int, Strategy],
        model_nbytes: int,
        deadline_at: float,
    ) -> Generator:
        """An aggregating site: the gateway fetches the model once, its clients train and upload
        to it over their access links, and it aggregates and sends one update upstream."""
        gateway = self.aggregators[site]
        down_full, up_full = self.topology.downlink_routes[members[0]], self.topology.uplink_routes[members[0]]
        procs: list[simpy.Process] = []
        phase: str | None = "download"
        start, nbytes = self.env.now, model_nbytes
        try:
            yield from self.network.transfer(down_full[:-1], nbytes)
            self._record(r, gateway, phase, FP32, nbytes, start, "completed")
            phase = None  # collecting: the members' own rows tell that part
            for cid in members:
                routes = (self.topology.downlink_routes[cid][-1:], self.topology.uplink_routes[cid][:1])
                procs.append(self._start_client(r, cid, assignment[cid], model_nbytes, routes, deadline_at))
            # Collect until the aggregate can still reach the server in time: twice the floor of
            # aggregating and sending it (jitter and quantized updates' decoding come on top).
            # Stragglers are cut off, not waited for.
            upstream_s = transfer_floor_s(up_full[1:], self.topology.links, model_nbytes)
            reserve_s = 2.0 * (upstream_s + self._aggregation_estimate(site, len(members)))
            cutoff = max(deadline_at - reserve_s - self.env.now, 0.0)
            yield self.env.all_of(procs) | self.env.timeout(cutoff)
            for proc in procs:
                if proc.is_alive:
                    proc.interrupt("aggregator cut-off")
            yield self.env.all_of(procs)
            arrived = [p.value for p in procs if p.value.result is not None]
            if not arrived:
                return _SiteOutcome([p.value for p in procs], None)
            phase, start, nbytes = "compute", self.env.now, 0
            update, work = self.work.gateway([o.result.update for o in arrived])
            yield self.env.timeout(charge_seconds(work, gateway.device))
            self._record(r, gateway, phase, FP32, nbytes, start, "completed")
            phase, start, nbytes = "upload", self.env.now, update.nbytes
            yield from self.network.transfer(up_full[1:], nbytes)
            self._record(r, gateway, phase, FP32, nbytes, start, "completed")
            return _SiteOutcome([p.value for p in procs], update)
        except (simpy.Interrupt, TransferStalledError) as stop:
            status = "failed" if isinstance(stop, TransferStalledError) else "dropped"
            reason = str(stop) if status == "failed" else ""
            for proc in procs:
                if proc.is_alive:
                    proc.interrupt(stop.cause if isinstance(stop, simpy.Interrupt) else "gateway failed")
            if procs:
                yield self.env.all_of(procs)
            if phase is not None:
                self._record(r, gateway, phase, FP32, nbytes, start, status, reason)
            for cid in members[len(procs) :]:  # never started: the gateway had no model for them
                self._record(
                    r,
                    self.scenario.clients[cid],
                    "download",
                    assignment[cid],
                    0,
                    self.env.now,
                    status,
                    "the site's aggregator did not get the global model",
                )
            lost = [_Outcome(p.value.client_id, p.value.strategy, None) for p in procs]
            lost += [_Outcome(cid, assignment[cid], None) for cid in members[len(procs) :]]
            return _SiteOutcome(lost, None, gateway_failed=status == "failed")

    def _aggregation_estimate(self, site: str, n_updates: int) -> float:
        """Seconds the site's gateway needs to aggregate ``n_updates`` fp32 updates (once per
        site and count, then reused)."""
        key = (site, n_updates)
        if key not in self._aggregation_s:
            work = self.work.gateway_estimate(n_updates)
            self._aggregation_s[key] = charge_seconds(work, self.aggregators[site].device)
        return self._aggregation_s[key]

    def _round(self, r: int) -> Generator:
        spec = self.scenario.spec
        start = self.env.now
        first_phase = len(self.phases)
        availability = self.scenario.availability
        ready_at = availability.next_available(self.eligible, self.env.now)
        if ready_at == math.inf:
            raise SimulationError(f"round {r}: no client is available at {self.env.now:.1f} s or later")
        yield self.env.timeout(ready_at - self.env.now)  # the server waits for someone to be on
        candidates = [cid for cid in self.eligible if availability.available(cid, self.env.now)]
        n_select = min(spec.training.clients_per_round, len(candidates))
        selected = tuple(sorted(int(i) for i in self.rng["selection"].choice(candidates, n_select, replace=False)))
        decided = time.perf_counter()
        assignment = self.policy.assign(RoundContext(r, selected))
        self._policy_s += time.perf_counter() - decided
        able = {cid: assignment[cid] for cid in selected if assignment[cid].label in self.able[cid]}
        model_nbytes = self.work.begin_round(r, able)
        self._faults = {}
        if self._injects_faults:
            pending = {i: s for i, s in self.scenario.scheduled_crashes.items() if i not in self._crashes_fired}
            self._faults, fired = draw(selected, self.scenario.crash_rules, pending, self._corruptions, r, spec.seed)
            self._crashes_fired.update(fired)
        deadline_at = self.env.now + spec.training.round_deadline
        by_site: dict[str, list[int]] = {}
        procs = []
        for cid in selected:
            site = self.scenario.clients[cid].site
            if site in self.aggregators:
                by_site.setdefault(site, []).append(cid)
            else:
                routes = (self.topology.downlink_routes[cid], self.topology.uplink_routes[cid])
                procs.append(self._start_client(r, cid, assignment[cid], model_nbytes, routes, deadline_at))
        for site, members in by_site.items():
            procs.append(self.env.process(self._site_round(r, site, members, assignment, model_nbytes, deadline_at)))
        yield self.env.all_of(procs) | self.env.timeout(spec.training.round_deadline)
        collect_end = self.env.now
        # The deadline is inclusive: work that ends at this very instant (an upload whose last
        # byte arrives now) is processed before the late clients are interrupted.
        while any(p.is_alive for p in procs) and self.env.peek() == self.env.now:
            yield self.env.timeout(0)
        for proc in procs:
            if proc.is_alive:
                proc.interrupt("round deadline")
        yield self.env.all_of(procs)  # the interrupted processes record their drop at this instant

        values = [p.value for p in procs]
        direct = [v for v in values if isinstance(v, _Outcome)]
        sites = [v for v in values if isinstance(v, _SiteOutcome)]
        updates = [o.result.update for o in direct if o.result is not None]
        updates += [s.update for s in sites if s.update is not None]
        # A member's update reached the server only if its aggregator's did.
        outcomes = direct + [
            o if s.update else _Outcome(o.client_id, o.strategy, None) for s in sites for o in s.members
        ]
        outcomes.sort(key=lambda o: o.client_id)
        reported = [o for o in outcomes if o.result is not None]
        server_s = 0.0
        accuracy: Pending | None = None  # no update reached the server: the model is unchanged
        least = spec.faults.min_reports
        status = "ok" if len(reported) >= least else f"too few reports ({len(reported)}, at least {least} needed)"
        if updates and status == "ok":
            outcome = self.work.server(updates)
            server_s = charge_seconds(outcome.work, self.scenario.server_device)
            yield self.env.timeout(server_s)
            accuracy = outcome.accuracy

        unable = {p.client_id for p in self.phases[first_phase:] if p.status == "unable"}
        rejected = {p.client_id for p in self.phases[first_phase:] if p.status == "rejected" and p.client_id >= 0}
        failed = {p.client_id for p in self.phases[first_phase:] if p.status == "failed" and p.client_id >= 0}
        failed |= {o.client_id for s in sites if s.gateway_failed for o in s.members} - unable - rejected
        kinds = [o.strategy.kind for o in outcomes if o.client_id not in unable]
        losses = [o.result.train_loss for o in reported if o.result.train_loss is not None]
        this_round = self.phases[first_phase:]
        latency = self.env.now - start
        compute_j = sum(p.energy_j for p in this_round if p.phase == "compute")
        radio_j = sum(p.energy_j for p in this_round if p.phase != "compute")
        computing: Counter[int] = Counter()  # one pass: a round of thousands stays linear
        for p in this_round:
            if p.phase == "compute":
                computing[p.client_id] += p.end_s - p.start_s
        idle_j = sum(self.scenario.clients[cid].device.power.idle * (latency - computing[cid]) for cid in selected)
        self.rounds.append(
            RoundRecord(
                round=r,
                start_s=start,
                collect_end_s=collect_end,
                end_s=self.env.now,
                latency_s=latency,
                server_s=server_s,
                selected=len(selected),
                reported=len(reported),
                dropped=len(selected) - len(reported) - len(unable) - len(failed) - len(rejected),
                failed=len(failed),
                unable=len(unable),
                rejected=len(rejected),
                n_fp32=kinds.count("fp32"),
                n_ptq=kinds.count("ptq"),
                n_qat=kinds.count("qat"),
                bytes_down=sum(p.nbytes for p in this_round if p.phase == "download" and p.status == "completed"),
                bytes_up=sum(p.nbytes for p in this_round if p.phase == "upload" and p.status in ARRIVED),
                energy_compute_j=compute_j,
                energy_radio_j=radio_j,
                energy_idle_j=idle_j,
                energy_j=compute_j + radio_j + idle_j,
                train_loss=float(np.mean(losses)) if losses else float("nan"),
                fp32_accuracy=math.nan,  # filled in by _settle once the evaluation is done
                deployed_accuracy=math.nan,
                status=status,
            )
        )
        self._unsettled.append((len(self.rounds) - 1, accuracy))
        decided = time.perf_counter()
        self.policy.observe(
            [
                ClientReport(
                    o.client_id,
                    r,
                    o.strategy,
                    o.result is not None,
                    len(self.data.clients[o.client_id]),
                    o.result.train_loss if o.result else None,
                    o.result.divergence if o.result else None,
                    o.result.deployment_gap if o.result else None,
                )
                for o in outcomes
            ]
        )
        self._policy_s += time.perf_counter() - decided

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
        records, which its files hold (see :mod:`fedhq_sim.checkpoint`)."""
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
            "rounds": len(self.rounds),
            "phases": len(self.phases),
            "samples": len(self.network.samples),
        }

    def checkpoint(self, r: int) -> dict[str, Any]:
        """The state at the end of round ``r`` (with :attr:`checkpointing`), once its record is complete."""
        return self._snapshots.pop(r)

    def restore(
        self, state: dict[str, Any], rounds: list[RoundRecord], phases: list[PhaseRecord], samples: list[LinkSample]
    ) -> None:
        """Continue from a checkpoint of this scenario: after :meth:`run`, the records are those
        of a run that was never interrupted. The clock goes back with every event the
        interrupted run still had pending, at its exact time and in its order."""
        self.env = simpy.Environment(initial_time=state["clock_s"])
        self.network = self._new_network()
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
        self.rounds, self.phases = list(rounds), list(phases)
        self.host_timing = [HostTiming(rec.round, math.nan, math.nan) for rec in rounds[1:]]  # not measured here
        self._next_round = state["round"] + 1

    def run(self, on_round: RoundCallback | None = None) -> RunResult:
        """Simulate every round; ``on_round(record, host_seconds)`` is called for each once its
        record is complete: right after the round, or, where the evaluation runs beside the
        next round's client work (a pool, Ray), after that next round."""

        def report(indices: list[int]) -> None:
            for index in indices:
                if on_round is not None:
                    on_round(self.rounds[index], self.host_timing[index - 1].host_s)

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one thread: float reductions then do not depend on the host's core count
        try:
            if self._next_round == 1:
                self.rounds.append(self._initial_round())
            for r in range(self._next_round, self.scenario.spec.training.rounds + 1):
                host_start = time.perf_counter()
                self._policy_s = 0.0
                # Run until this round's process ends; stale timers (a deadline that was not
                # needed) stay queued and fire later without effect.
                with _collection_after_round():
                    self.env.run(until=self.env.process(self._round(r)))
                    if self.checkpointing:
                        self._snapshots[r] = self._snapshot(r)
                host_s = time.perf_counter() - host_start
                self.host_timing.append(HostTiming(r, host_s, self._policy_s))
                report(self._settle(wait=False))
            report(self._settle(wait=True))
        finally:
            gc.unfreeze()  # collectable again once the run is no longer referenced
            torch.set_num_threads(threads)
        return RunResult(list(self.rounds), list(self.phases))


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
