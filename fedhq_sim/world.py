"""The world a run plays out in, built once before the clock starts: no SimPy here.

Everything that follows from the scenario alone goes into a :class:`World`: the policy's
class and options, the data split, the topology and routes, which client can run which
strategy and why not (feasibility), the aggregating gateways, the local-training settings,
the hardware and data analysis and what the policy is told about each client. The engine
then only plays rounds on it, and an engine test can hand it a world built by hand
(:meth:`fedhq_sim.engine.Simulation.on`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from fedhq_sim.analysis import ClientAnalysis, analyze
from fedhq_sim.charge import charge_seconds
from fedhq_sim.data import FederatedData, PartitionError, federate
from fedhq_sim.errors import InputError
from fedhq_sim.feasibility import Feasibility, check_client, payload_bytes, training_step, transfer_floor_s
from fedhq_sim.policies import ClientInfo
from fedhq_sim.policies.choice import PolicyChoice, check_timing_only, choose_policy
from fedhq_sim.quant.strategy import FP32, Strategy
from fedhq_sim.scenario import ClientSpec, LoadedScenario
from fedhq_sim.topology import Topology, build_topology
from fedhq_sim.training import LocalConfig
from fedhq_sim.workload import load_data

STREAMS = ("partition", "selection", "policy", "network")
"""The run's random streams, spawned from its seed in this order (see :func:`streams`)."""


def streams(seed: int) -> dict[str, np.random.Generator]:
    """One independent generator per purpose, so that drawing more of one (a larger fleet's
    network jitter) never shifts another (the data split, the selection)."""
    children = np.random.SeedSequence(seed).spawn(len(STREAMS))
    return {name: np.random.default_rng(child) for name, child in zip(STREAMS, children, strict=True)}


@dataclass(frozen=True)
class World:
    """What a run of the scenario is played on; see the module docstring."""

    scenario: LoadedScenario
    policy_choice: PolicyChoice
    data: FederatedData
    topology: Topology
    feasibility: list[Feasibility]
    able: dict[int, frozenset[str]]
    """The strategy labels each client can run (memory, link, deadline)."""
    aggregators: dict[str, ClientSpec]
    """Each aggregating site's gateway, as a client with a negative id (so it appears in the events)."""
    local: LocalConfig
    analysis: dict[int, ClientAnalysis]
    infos: list[ClientInfo]
    """What the policy is told about each client, in client order."""

    @property
    def quantized_bits(self) -> int:
        """The bit width of the run's quantized strategies and of the deployed model."""
        return self.scenario.spec.deployment.bits

    def reason(self, client_id: int, strategy: Strategy) -> str:
        """Why ``client_id`` cannot run ``strategy`` (its feasibility row's reason)."""
        return next(f.reason for f in self.feasibility if f.client_id == client_id and f.strategy == strategy.label)


def range_bits(scenario: LoadedScenario) -> int | None:
    """The deployment's width when the clients' updates carry its activation ranges."""
    deployment = scenario.spec.deployment
    return deployment.bits if deployment.from_clients else None


def candidate_strategies(scenario: LoadedScenario) -> tuple[Strategy, ...]:
    """fp32 and both quantized strategies at the deployment's width."""
    bits = scenario.spec.deployment.bits
    return (FP32, Strategy("ptq", bits), Strategy("qat", bits))


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
            rng=rng if rng is not None else streams(scenario.spec.seed)["partition"],
        )
    except PartitionError as error:
        raise InputError(scenario.path, "data", str(error)) from None
    if deployment.from_clients:
        data = dataclasses.replace(data, server_calibration=data.server_calibration.subset(np.arange(0)))
    return data


def check_clients(scenario: LoadedScenario, data: FederatedData, topology: Topology) -> list[Feasibility]:
    """Every client against every strategy: memory and link (see :mod:`fedhq_sim.feasibility`)."""
    spec = scenario.spec
    sample_shape = tuple(data.test.x.shape[1:])
    batch_shape = (spec.training.batch_size, *sample_shape)
    bits = range_bits(scenario)
    model_nbytes = payload_bytes(scenario.model, data.num_classes, FP32, sample_shape, bits)
    rows = []
    for client in scenario.clients:
        cid = client.client_id
        download_s = transfer_floor_s(topology.downlink_routes[cid], topology.links, model_nbytes)
        # Full batches only (a partial last batch costs less): the compute time stays a floor.
        n, batch = len(data.clients[cid]), spec.training.batch_size
        fixed = spec.training.local_steps
        full_steps = (fixed if n >= batch else 0) if fixed is not None else spec.training.local_epochs * (n // batch)
        for strategy in candidate_strategies(scenario):
            upload_nbytes = payload_bytes(scenario.model, data.num_classes, strategy, sample_shape, bits)
            step = training_step(scenario.model, data.num_classes, strategy, batch_shape)
            rows.append(
                check_client(
                    client,
                    strategy,
                    memory_bytes=step.memory_bytes,
                    download_s=download_s,
                    compute_s=full_steps * charge_seconds(step.work, client.device),
                    upload_s=transfer_floor_s(topology.uplink_routes[cid], topology.links, upload_nbytes),
                    upload_nbytes=upload_nbytes,
                    deadline_s=spec.training.round_deadline,
                )
            )
    return rows


def site_gateways(scenario: LoadedScenario) -> dict[str, ClientSpec]:
    """Each aggregating site's gateway as a client with a negative id (``-1 - site index``),
    on the site's backhaul: it appears in the events like a client."""
    site_index = {site.name: i for i, site in enumerate(scenario.spec.sites)}
    return {
        site: ClientSpec(-1 - site_index[site], f"{site}/aggregator", site, device, scenario.backhauls[site])
        for site, device in scenario.aggregators.items()
    }


def build_world(scenario: LoadedScenario, partition: np.random.Generator, *, timing_only: bool = False) -> World:
    """The world of one run; ``partition`` is the run's data-split stream (see :func:`streams`).

    Timing-only mode refuses a policy that learns from real training, which it produces none
    of. Everything else that can be wrong with the scenario past its file (a split that
    cannot be made, a fleet in which no client can run anything) is an input error here.
    """
    spec = scenario.spec
    choice = choose_policy(scenario)
    if timing_only:
        check_timing_only(scenario, choice)
    data = federated_data(scenario, partition)
    topology = build_topology(scenario)
    feasibility = check_clients(scenario, data, topology)
    able_sets: dict[int, set[str]] = {c.client_id: set() for c in scenario.clients}
    for row in feasibility:  # one pass: building a fleet of thousands stays linear
        if row.able:
            able_sets[row.client_id].add(row.strategy)
    able = {cid: frozenset(labels) for cid, labels in able_sets.items()}
    t = spec.training
    local = LocalConfig(
        scenario.model,
        data.num_classes,
        t.local_epochs,
        t.batch_size,
        t.learning_rate,
        t.calibration_samples,
        data.input_shape,
        t.local_steps,
        choice.policy_class.observes_deployment_gap,
        range_bits(scenario),
    )
    analysis = analyze(scenario, data, topology, local, candidate_strategies(scenario))
    infos = [
        ClientInfo(
            c.client_id,
            c.site,
            c.device.name,
            c.link.name,
            len(data.clients[c.client_id]),
            able[c.client_id],
            analysis[c.client_id],
        )
        for c in scenario.clients
    ]
    return World(scenario, choice, data, topology, feasibility, able, site_gateways(scenario), local, analysis, infos)
