"""The parts of the plant that act on the clock: clients, aggregating gateways, the server.

Each is a component in desmod's sense: it holds the environment, the network and the
recorder (through the run's :class:`Runtime`) and offers SimPy processes. A client's round
downloads the global model over its route, does its local work (charged on its device
profile) and uploads its update; a gateway fetches the model once for its site's clients,
collects their updates over their access links and sends one aggregate upstream; the
server aggregates what reached it and evaluates the new model, charged on its own profile.
What the work is, executed for real or priced from its profiles in timing-only mode, is the
:class:`~fedhq_sim.round_work.RoundWork`'s business; the components charge the same either
way. The engine's loop only selects, assigns, spawns these processes, waits and aggregates.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

import simpy

from fedhq_sim.charge import charge_seconds
from fedhq_sim.errors import SimulationError
from fedhq_sim.faults import CRASHED, ClientFaults
from fedhq_sim.feasibility import transfer_floor_s
from fedhq_sim.network import FlowNetwork, TransferStalledError
from fedhq_sim.policies.base import ClientReport
from fedhq_sim.profiles import DeviceProfile
from fedhq_sim.quant.strategy import FP32, Strategy
from fedhq_sim.recorder import Recorder
from fedhq_sim.round_work import ClientResult, RoundWork
from fedhq_sim.scenario import ClientSpec
from fedhq_sim.server_work import Mixing, Update
from fedhq_sim.world import World

OFFLINE = "client offline"  # the interrupt cause of a client whose availability ended
CRASH = "device crashed"  # the interrupt cause of an injected crash
CANCELLED = "the round had the reports it needed (over-selection)"  # the cause of a cancelled client
RUN_ENDED = "the run ended with its last version (asynchronous modes)"  # a turn still in flight then
NO_FAULT = ClientFaults()


@dataclass(frozen=True)
class Outcome:
    """A selected client's round: its strategy, and its result if its update arrived whole."""

    client_id: int
    strategy: Strategy
    result: ClientResult | None

    def report(self, r: int, num_samples: int, reported: bool) -> ClientReport:
        """What the policy is told of this outcome in round (version) ``r``."""
        result = self.result
        return ClientReport(
            self.client_id,
            r,
            self.strategy,
            reported,
            num_samples,
            result.train_loss if result else None,
            result.divergence if result else None,
            result.deployment_gap if result else None,
        )


@dataclass(frozen=True)
class SiteOutcome:
    """An aggregating site's round: its members' outcomes, the one update it sent on, and
    whether its gateway failed (then its members count as failed, whatever they had done)."""

    members: list[Outcome]
    update: Update | None
    gateway_failed: bool = False


@dataclass
class Quorum:
    """An over-selected round's count of arrived updates: ``enough`` fires at the
    ``wanted``-th (a direct client's update on reaching the server, a site member's on
    reaching its gateway, which then stops collecting and forwards what it holds)."""

    wanted: int
    enough: simpy.Event
    arrived: int = 0

    def note(self) -> None:
        self.arrived += 1
        if self.arrived >= self.wanted and not self.enough.triggered:
            self.enough.succeed()


@dataclass
class Runtime:
    """What every component acts through: the clock, the network, the recorder, the round's
    work and the world; ``faults`` are the injected faults of the round being played, and
    ``quorum`` its count of arrivals when it is over-selected."""

    env: simpy.Environment
    network: FlowNetwork
    recorder: Recorder
    work: RoundWork
    world: World
    faults: dict[int, ClientFaults] = field(default_factory=dict)
    quorum: Quorum | None = None
    bases: dict[int, int] | None = None
    """In the asynchronous modes, the model version each client's turn in flight began
    from; ``None`` in synchronous rounds, where no update is stale."""
    model_version: int = 0
    """The versions that changed the model so far (asynchronous modes)."""

    def staleness(self, client_id: int) -> int:
        """How many model versions behind the update of ``client_id``'s turn arrives now."""
        return 0 if self.bases is None else self.model_version - self.bases[client_id]


class Client:
    """One device of the fleet taking part in rounds."""

    def __init__(self, runtime: Runtime, spec: ClientSpec) -> None:
        self.rt = runtime
        self.spec = spec

    def start(
        self, r: int, strategy: Strategy, model_nbytes: int, routes: tuple[Sequence, Sequence], deadline_at: float
    ) -> simpy.Process:
        """The client's round ``r`` as a process, watched for going offline before ``deadline_at``."""
        env, cid = self.rt.env, self.spec.client_id
        availability = self.rt.world.scenario.availability
        proc = env.process(self._round(r, strategy, model_nbytes, *routes))
        available = availability.available(cid, env.now)
        offline_at = availability.next_change(cid, env.now)
        if available and offline_at < deadline_at:
            env.process(self._offline_watch(proc, offline_at))
        return proc

    def _offline_watch(self, proc: simpy.Process, offline_at: float) -> Generator:
        """Fail the client's round when its availability ends before the round does."""
        yield self.rt.env.timeout(offline_at - self.rt.env.now)
        if proc.is_alive:
            proc.interrupt(OFFLINE)

    def _crash(self, proc: simpy.Process, delay_s: float) -> Generator:
        """An injected crash of the device ``delay_s`` from now, if it is still busy."""
        yield self.rt.env.timeout(delay_s)
        if proc.is_alive:
            proc.interrupt(CRASH)

    def _round(self, r: int, strategy: Strategy, model_nbytes: int, down: Sequence, up: Sequence) -> Generator:
        env, world, client = self.rt.env, self.rt.world, self.spec
        record = self.rt.recorder.record
        cid = client.client_id
        if not world.scenario.availability.available(cid, env.now):  # went off while waiting
            reason = f"went offline at or before {env.now:.3f} s (shift, maintenance or trace)"
            record(r, client, "download", strategy, 0, env.now, "failed", reason)
            return Outcome(cid, strategy, None)
        if strategy.label not in world.able[cid]:
            record(r, client, "compute", strategy, 0, env.now, "unable", world.reason(cid, strategy))
            return Outcome(cid, strategy, None)
        phase, start, nbytes = "download", env.now, model_nbytes
        try:
            yield from self.rt.network.transfer(down, nbytes)
            record(r, client, phase, strategy, nbytes, start, "completed")

            phase, start, nbytes = "compute", env.now, 0
            result = self.rt.work.client(cid)  # made ready at the round's start (RoundWork.begin_round)
            fault = self.rt.faults.get(cid, NO_FAULT)
            compute_s = charge_seconds(result.work, client.device)
            if fault.crash == "compute":
                yield env.timeout(fault.crash_at * compute_s)
                record(r, client, phase, strategy, nbytes, start, "failed", CRASHED["compute"])
                return Outcome(cid, strategy, None)
            yield env.timeout(compute_s)
            record(r, client, phase, strategy, nbytes, start, "completed")

            phase, start, nbytes = "upload", env.now, result.update.nbytes
            if fault.crash == "upload":  # at a fraction of the upload's floor: always before it ends
                delay = fault.crash_at * transfer_floor_s(up, world.topology.links, nbytes)
                env.process(self._crash(env.active_process, delay))
            yield from self.rt.network.transfer(up, nbytes)
            if fault.corrupt is not None:
                why = self.rt.work.rejection(result.update, fault.corrupt)
                if why is None:  # the check is built to catch every injected corruption
                    raise SimulationError(f"round {r}: {client.name}'s corrupted update passed the server's check")
                reason = f"rejected on arrival: {why} (fault injection: a corrupted update)"
                record(r, client, phase, strategy, nbytes, start, "rejected", reason)
                return Outcome(cid, strategy, None)
            record(r, client, phase, strategy, nbytes, start, "completed", staleness=self.rt.staleness(cid))
            if self.rt.quorum is not None:
                self.rt.quorum.note()
            return Outcome(cid, strategy, result)
        except simpy.Interrupt as interrupt:
            if interrupt.cause == OFFLINE:
                reason = f"went offline at {env.now:.3f} s (shift, maintenance or trace)"
                record(r, client, phase, strategy, nbytes, start, "failed", reason)
            elif interrupt.cause == CRASH:
                record(r, client, phase, strategy, nbytes, start, "failed", CRASHED[phase])
            elif interrupt.cause in (CANCELLED, RUN_ENDED):
                record(r, client, phase, strategy, nbytes, start, "cancelled", interrupt.cause)
            else:
                record(r, client, phase, strategy, nbytes, start, "dropped")
            return Outcome(cid, strategy, None)
        except TransferStalledError as error:
            record(r, client, phase, strategy, nbytes, start, "failed", str(error))
            return Outcome(cid, strategy, None)


class SiteAggregator:
    """A site's gateway that aggregates its clients' updates and sends one upstream."""

    def __init__(self, runtime: Runtime, gateway: ClientSpec, clients: Sequence[Client]) -> None:
        self.rt = runtime
        self.gateway = gateway
        self.clients = clients
        self._aggregation_s: dict[int, float] = {}

    def aggregation_estimate(self, n_updates: int) -> float:
        """Seconds the gateway needs to aggregate ``n_updates`` fp32 updates (once per count,
        then reused)."""
        if n_updates not in self._aggregation_s:
            work = self.rt.work.gateway_estimate(n_updates)
            self._aggregation_s[n_updates] = charge_seconds(work, self.gateway.device)
        return self._aggregation_s[n_updates]

    def round(
        self, r: int, members: list[int], assignment: dict[int, Strategy], model_nbytes: int, deadline_at: float
    ) -> Generator:
        """The site's round: the gateway fetches the model once, its clients train and upload
        to it over their access links, and it aggregates and sends one update upstream."""
        env, topology, gateway = self.rt.env, self.rt.world.topology, self.gateway
        record = self.rt.recorder.record
        down_full, up_full = topology.downlink_routes[members[0]], topology.uplink_routes[members[0]]
        procs: list[simpy.Process] = []
        phase: str | None = "download"
        start, nbytes = env.now, model_nbytes
        try:
            yield from self.rt.network.transfer(down_full[:-1], nbytes)
            record(r, gateway, phase, FP32, nbytes, start, "completed")
            phase = None  # collecting: the members' own rows tell that part
            for cid in members:
                routes = (topology.downlink_routes[cid][-1:], topology.uplink_routes[cid][:1])
                procs.append(self.clients[cid].start(r, assignment[cid], model_nbytes, routes, deadline_at))
            # Collect until the aggregate can still reach the server in time: twice the floor of
            # aggregating and sending it (jitter and quantized updates' decoding come on top).
            # Stragglers are cut off, not waited for.
            upstream_s = transfer_floor_s(up_full[1:], topology.links, model_nbytes)
            reserve_s = 2.0 * (upstream_s + self.aggregation_estimate(len(members)))
            cutoff = max(deadline_at - reserve_s - env.now, 0.0)
            collecting = env.all_of(procs) | env.timeout(cutoff)
            quorum = self.rt.quorum
            yield collecting if quorum is None else collecting | quorum.enough
            enough = quorum is not None and quorum.enough.triggered
            for proc in procs:
                if proc.is_alive:
                    proc.interrupt(CANCELLED if enough else "aggregator cut-off")
            yield env.all_of(procs)
            arrived = [p.value for p in procs if p.value.result is not None]
            if not arrived:
                return SiteOutcome([p.value for p in procs], None)
            phase, start, nbytes = "compute", env.now, 0
            update, work = self.rt.work.gateway([o.result.update for o in arrived])
            yield env.timeout(charge_seconds(work, gateway.device))
            record(r, gateway, phase, FP32, nbytes, start, "completed")
            phase, start, nbytes = "upload", env.now, update.nbytes
            yield from self.rt.network.transfer(up_full[1:], nbytes)
            record(r, gateway, phase, FP32, nbytes, start, "completed")
            return SiteOutcome([p.value for p in procs], update)
        except (simpy.Interrupt, TransferStalledError) as stop:
            cancelled = isinstance(stop, simpy.Interrupt) and stop.cause == CANCELLED
            status = "failed" if isinstance(stop, TransferStalledError) else "cancelled" if cancelled else "dropped"
            reason = str(stop) if status == "failed" else CANCELLED if cancelled else ""
            for proc in procs:
                if proc.is_alive:
                    proc.interrupt(stop.cause if isinstance(stop, simpy.Interrupt) else "gateway failed")
            if procs:
                yield env.all_of(procs)
            if phase is not None:
                record(r, gateway, phase, FP32, nbytes, start, status, reason)
            for cid in members[len(procs) :]:  # never started: the gateway had no model for them
                why = "the site's aggregator did not get the global model"
                record(r, self.clients[cid].spec, "download", assignment[cid], 0, env.now, status, why)
            lost = [Outcome(p.value.client_id, p.value.strategy, None) for p in procs]
            lost += [Outcome(cid, assignment[cid], None) for cid in members[len(procs) :]]
            return SiteOutcome(lost, None, gateway_failed=status == "failed")


class Server:
    """The aggregation server: aggregates the round's updates and evaluates the new model."""

    def __init__(self, runtime: Runtime, device: DeviceProfile) -> None:
        self.rt = runtime
        self.device = device

    def aggregate(self, updates: list[Update], mixing: Mixing | None = None) -> Generator:
        """Aggregate ``updates`` (an asynchronous mode's step with ``mixing``; charged on the
        server's profile); the process's value is the seconds it took and the pending
        evaluation of the new model."""
        outcome = self.rt.work.server(updates, mixing)
        server_s = charge_seconds(outcome.work, self.device)
        yield self.rt.env.timeout(server_s)
        return server_s, outcome.accuracy
