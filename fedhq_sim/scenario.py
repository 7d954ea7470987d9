"""Scenarios: the one YAML file a run depends on, validated strictly and resolved.

This is the only module that knows the scenario format (as Ciw's ``import_params``). It
validates the file, resolves every profile name against the profile library, checks what
only makes sense across sections (enough clients for a round, known sites and clients), and
returns a :class:`LoadedScenario` of plain values. Defaults live only in the model fields
here. It runs no code of the scenario's: the policy (a registered name, perhaps from a user's
module) is resolved by :mod:`fedhq_sim.policies.choice`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, model_validator

from fedhq_sim.aggregation_modes import concurrency
from fedhq_sim.availability import DAY_S, Availability, ClientAvailability, Window, read_trace
from fedhq_sim.deployment import DeploymentSpec
from fedhq_sim.errors import InputError
from fedhq_sim.faults import CrashRule, ScheduledCrash
from fedhq_sim.models import ModelRef
from fedhq_sim.nodes import CORE, SERVER, client_node, site_node
from fedhq_sim.overrides import with_overrides
from fedhq_sim.profiles import DeviceProfile, LinkProfile, ProfileLibrary
from fedhq_sim.schema import NonNegativeSeconds, Seconds, StrictModel, validate
from fedhq_sim.training_spec import TrainingSpec
from fedhq_sim.workload import DataSource, DataSpec, ModelSpec, check_model, data_source, load_data, resolve_model
from fedhq_sim.yamlio import load_yaml_mapping

SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MAX_CLIENTS = 200_000
"""A fleet this large would take some 20 GiB in timing-only mode (extrapolated from the 1.1 GiB
that ``bench/timing_scale.py`` measures at 10,000 clients)."""
ProfileName = Annotated[str, Field(pattern=SAFE_NAME)]  # a file stem, never a path


class DeviceGroup(StrictModel):
    """``count`` devices of one class on one access-link class."""

    device: ProfileName
    link: ProfileName
    count: int = Field(ge=1, le=100_000)


class SiteSpec(StrictModel):
    """A plant site: its devices behind one gateway, and the gateway's backhaul to the server.

    With ``aggregator`` (a device profile), the site's gateway aggregates its clients' updates
    and sends one update upstream; it also fetches the global model once for all of them.
    Without ``backhaul`` the site has no gateway: its devices' access links end at the core
    router in front of the server (a star around the server).
    """

    name: str = Field(pattern=SAFE_NAME)
    backhaul: ProfileName | None = None
    devices: list[DeviceGroup] = Field(min_length=1)
    aggregator: ProfileName | None = None
    via: str | None = None  # fix the route: through this neighbour site's gateway (a site link)


class ServerSpec(StrictModel):
    """The aggregation server: its device class and its own network link."""

    device: ProfileName
    link: ProfileName


class OutageSpec(StrictModel):
    """A window in which one physical link carries nothing, in either direction.

    ``link`` names it: ``server`` (the server's link), ``backhaul:<site>``,
    ``access:<client>`` (a client's own link, e.g. ``access:assembly/rpi4-0``) or
    ``site_link:<site>/<site>`` (a link of ``network.site_links``).
    """

    link: str
    start: NonNegativeSeconds
    duration: Seconds


class SiteLinkSpec(StrictModel):
    """A link between two sites' gateways (inter-building fibre, a radio bridge).

    ``uplink`` capacity is the direction from the first site to the second.
    """

    sites: list[str] = Field(min_length=2, max_length=2)
    link: ProfileName


class NetworkSpec(StrictModel):
    """Links between sites, outage windows, and how long a transfer may stall before it fails."""

    site_links: list[SiteLinkSpec] = Field(default_factory=list)
    outages: list[OutageSpec] = Field(default_factory=list)
    stall_timeout: Seconds | None = None


class ShiftSpec(StrictModel):
    """A daily window (time of day, e.g. ``6 h`` to ``14 h``; ``22 h`` to ``6 h`` crosses midnight)."""

    start: NonNegativeSeconds
    end: NonNegativeSeconds
    sites: list[str] | None = None  # default: every site

    @model_validator(mode="after")
    def _within_a_day(self) -> ShiftSpec:
        for key in ("start", "end"):
            if getattr(self, key) >= DAY_S:
                raise ValueError(f"{key} is a time of day and must be below 24 h")
        if self.start == self.end:
            raise ValueError("start and end are equal: the shift would be empty")
        return self


class MaintenanceSpec(StrictModel):
    """A window (simulated time) in which a site's clients, or one client, are unavailable."""

    site: str | None = None
    client: str | None = None
    start: NonNegativeSeconds
    duration: Seconds

    @model_validator(mode="after")
    def _one_target(self) -> MaintenanceSpec:
        if (self.site is None) == (self.client is None):
            raise ValueError("name exactly one of 'site' or 'client'")
        return self


class AvailabilitySpec(StrictModel):
    """When clients can take part (see :mod:`fedhq_sim.availability`)."""

    day_start: NonNegativeSeconds = 0.0
    shifts: list[ShiftSpec] = Field(default_factory=list)
    maintenance: list[MaintenanceSpec] = Field(default_factory=list)
    trace: str | None = None  # CSV path, relative to the scenario file


class PolicySpec(StrictModel):
    """The assignment policy by registered name; its own options are checked by the policy."""

    model_config = StrictModel.model_config | {"extra": "allow"}
    name: str
    module: str | None = None  # a user's policy: a .py file (relative to the scenario) or a module name


class CrashSpec(StrictModel):
    """Devices that crash in the middle of a round, during their local work or their upload:
    each selected client with ``probability`` every round, or ``client`` once, in the first
    round from ``round`` on in which it takes part."""

    during: Literal["compute", "upload"]
    probability: float | None = Field(default=None, gt=0.0, le=1.0)
    client: str | None = None
    round: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _chance_or_schedule(self) -> CrashSpec:
        if (self.probability is None) == (self.client is None and self.round is None):
            raise ValueError("give a probability, or a client and a round (a scheduled crash)")
        if (self.client is None) != (self.round is None):
            raise ValueError("a scheduled crash needs both a client and a round")
        return self


class CorruptionSpec(StrictModel):
    """Updates that arrive corrupted (NaN or infinite values, or scaled far out of range), each
    reporting client's with ``probability`` every round; the server rejects them."""

    kind: Literal["nan", "inf", "huge"]
    probability: float = Field(gt=0.0, le=1.0)


class FaultSpec(StrictModel):
    """Faults to inject (see :mod:`fedhq_sim.faults`), and how few reports spoil a round."""

    crashes: list[CrashSpec] = Field(default_factory=list)
    corrupt_updates: list[CorruptionSpec] = Field(default_factory=list)
    min_reports: int = Field(default=1, ge=1)
    """A round in which fewer clients report is recorded as such and leaves the model as it was."""


class ScenarioSpec(StrictModel):
    """The whole scenario file."""

    name: str = Field(pattern=SAFE_NAME)
    description: str = ""
    seed: int = Field(ge=0, le=2**63 - 1)  # torch seeds are signed 64-bit
    profiles_dir: str = "../device_profiles"
    server: ServerSpec
    sites: list[SiteSpec] = Field(min_length=1)
    data: DataSpec
    model: ModelSpec
    training: TrainingSpec
    policy: PolicySpec
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    availability: AvailabilitySpec = Field(default_factory=AvailabilitySpec)
    faults: FaultSpec = Field(default_factory=FaultSpec)
    deployment: DeploymentSpec = Field(default_factory=DeploymentSpec)


@dataclass(frozen=True)
class Outage:
    """An outage resolved to its physical link: the pair of nodes it joins, in the topology."""

    nodes: tuple[str, str]
    start_s: float
    end_s: float


@dataclass(frozen=True)
class ClientSpec:
    """One client of the fleet with its profiles resolved."""

    client_id: int
    name: str
    site: str
    device: DeviceProfile
    link: LinkProfile


@dataclass(frozen=True)
class LoadedScenario:
    """A validated scenario with every name resolved to a profile."""

    path: Path
    spec: ScenarioSpec
    clients: tuple[ClientSpec, ...]
    server_device: DeviceProfile
    server_link: LinkProfile
    backhauls: dict[str, LinkProfile]
    outages: tuple[Outage, ...]
    availability: Availability
    aggregators: dict[str, DeviceProfile]
    site_links: tuple[tuple[str, str, LinkProfile], ...]
    crash_rules: tuple[CrashRule, ...] = ()
    scheduled_crashes: dict[int, ScheduledCrash] = field(default_factory=dict)
    """Scheduled crashes by their index in ``faults.crashes``."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Values set over the file's (``--set``, compare, sweep, the Python API)."""
    model: ModelRef | None = None
    """The model as every process builds it (its user code included)."""
    data_source: DataSource | None = None
    """Where the data comes from (:func:`fedhq_sim.workload.load_data` reads it)."""

    def text(self) -> str:
        """The scenario as run: the file itself, or with its overrides applied (as YAML)."""
        if not self.overrides:
            return self.path.read_text(encoding="utf-8")
        applied = with_overrides(load_yaml_mapping(self.path), self.overrides, self.path)
        header = "".join(f"# override: {key} = {value!r}\n" for key, value in self.overrides.items())
        return header + yaml.safe_dump(applied, sort_keys=False, allow_unicode=True)

    def resolved(self, policy_options: Mapping[str, Any]) -> dict[str, Any]:
        """Everything the run used, in SI units, for the results folder (with the policy's
        options as validated by :func:`fedhq_sim.policies.choice.choose_policy`)."""
        devices = {c.device.name: c.device for c in self.clients} | {self.server_device.name: self.server_device}
        devices |= {p.name: p for p in self.aggregators.values()}
        links = {c.link.name: c.link for c in self.clients} | {self.server_link.name: self.server_link}
        links |= {p.name: p for p in self.backhauls.values()}
        links |= {p.name: p for _, _, p in self.site_links}
        return {
            "units": "SI base units: seconds, bit/s (links), byte/s (memory bandwidth), bytes, operations/s",
            "scenario": self.spec.model_dump(mode="json"),
            "overrides": self.overrides,
            "policy_options": dict(policy_options),
            "clients": [
                {"client_id": c.client_id, "name": c.name, "site": c.site, "device": c.device.name, "link": c.link.name}
                for c in self.clients
            ],
            "device_profiles": {n: p.model_dump(mode="json") for n, p in sorted(devices.items())},
            "link_profiles": {n: p.model_dump(mode="json") for n, p in sorted(links.items())},
        }


def load_scenario(path: Path | str, overrides: Mapping[str, Any] | None = None) -> LoadedScenario:
    """Read, validate and resolve a scenario file, with optional :func:`with_overrides` values;
    any problem is an :class:`InputError`."""
    path = Path(path)
    spec = validate(ScenarioSpec, with_overrides(load_yaml_mapping(path), overrides or {}, path), path)
    try:
        library = ProfileLibrary((path.parent / spec.profiles_dir).resolve())
        is_dir = library.root.is_dir()
    except (OSError, ValueError) as error:
        raise InputError(path, "profiles_dir", f"not a usable path ({error})") from None
    if not is_dir:
        raise InputError(path, "profiles_dir", f"profile directory '{spec.profiles_dir}' does not exist")

    site_names = [s.name for s in spec.sites]
    for index, name in enumerate(site_names):
        if site_names.index(name) != index:
            raise InputError(path, f"sites[{index}].name", f"site name '{name}' is used twice")

    clients: list[ClientSpec] = []
    backhauls: dict[str, LinkProfile] = {}
    per_class: dict[tuple[str, str], int] = {}  # numbers devices of a class within a site, across groups
    aggregators: dict[str, DeviceProfile] = {}
    for s_index, site in enumerate(spec.sites):
        if site.backhaul is not None:
            key = f"sites[{s_index}].backhaul"
            backhauls[site.name] = library.link(site.backhaul, referenced_from=path, key=key)
        elif site.aggregator is not None:
            raise InputError(path, f"sites[{s_index}].aggregator", "needs a gateway: give the site a backhaul")
        if site.aggregator is not None:
            key = f"sites[{s_index}].aggregator"
            aggregators[site.name] = library.device(site.aggregator, referenced_from=path, key=key)
        for g_index, group in enumerate(site.devices):
            key = f"sites[{s_index}].devices[{g_index}]"
            device = library.device(group.device, referenced_from=path, key=f"{key}.device")
            link = library.link(group.link, referenced_from=path, key=f"{key}.link")
            for _ in range(group.count):
                k = per_class.get((site.name, device.name), 0)
                per_class[(site.name, device.name)] = k + 1
                clients.append(ClientSpec(len(clients), f"{site.name}/{device.name}-{k}", site.name, device, link))

    if len(clients) > MAX_CLIENTS:
        raise InputError(path, "sites", f"{len(clients):,} clients in all; a scenario holds at most {MAX_CLIENTS:,}")
    if spec.training.clients_per_round > len(clients):
        raise InputError(
            path,
            "training.clients_per_round",
            f"asks for {spec.training.clients_per_round} clients per round but the fleet has {len(clients)}",
        )
    slots = concurrency(spec.training.aggregation, spec.training.clients_per_round)
    if spec.training.mode in ("async", "buffered") and slots > len(clients):
        key = "training.aggregation.concurrency"
        raise InputError(path, key, f"asks for {slots} turns at once but the fleet has {len(clients)} clients")
    site_links = _resolve_site_links(spec, library, path)
    outages = _resolve_outages(spec, clients, path)
    availability = _resolve_availability(spec, clients, path)
    crash_rules, scheduled = _resolve_crashes(spec, clients, path)
    source = data_source(spec.data, path)
    model = resolve_model(spec.model, path)
    check_model(model, load_data(source), path, quantizes=spec.policy.name != "all-fp32")
    return LoadedScenario(
        path=path,
        spec=spec,
        clients=tuple(clients),
        server_device=library.device(spec.server.device, referenced_from=path, key="server.device"),
        server_link=library.link(spec.server.link, referenced_from=path, key="server.link"),
        backhauls=backhauls,
        outages=outages,
        availability=availability,
        aggregators=aggregators,
        site_links=site_links,
        crash_rules=crash_rules,
        scheduled_crashes=scheduled,
        overrides=dict(overrides or {}),
        model=model,
        data_source=source,
    )


def _resolve_crashes(
    spec: ScenarioSpec, clients: list[ClientSpec], path: Path
) -> tuple[tuple[CrashRule, ...], dict[int, ScheduledCrash]]:
    by_name = {c.name: c.client_id for c in clients}
    rules, scheduled = [], {}
    for index, crash in enumerate(spec.faults.crashes):
        if crash.probability is not None:
            rules.append(CrashRule(crash.during, crash.probability))
            continue
        if crash.client not in by_name:
            raise InputError(path, f"faults.crashes[{index}].client", f"unknown client '{crash.client}'")
        if crash.round is not None and crash.round > spec.training.rounds:
            last = spec.training.rounds
            raise InputError(path, f"faults.crashes[{index}].round", f"is after the last round ({last})")
        scheduled[index] = ScheduledCrash(by_name[crash.client], crash.round or 1, crash.during)
    return tuple(rules), scheduled


def _resolve_site_links(
    spec: ScenarioSpec, library: ProfileLibrary, path: Path
) -> tuple[tuple[str, str, LinkProfile], ...]:
    """Site-to-site links between gateways, and each ``via`` checked against them."""
    gateways = {s.name for s in spec.sites if s.backhaul is not None}
    resolved = []
    for index, site_link in enumerate(spec.network.site_links):
        a, b = site_link.sites
        for name in (a, b):
            if name not in gateways:
                problem = f"'{name}' is no site with a gateway (a backhaul): {', '.join(sorted(gateways))}"
                raise InputError(path, f"network.site_links[{index}].sites", problem)
        if a == b:
            raise InputError(path, f"network.site_links[{index}].sites", "a site link joins two different sites")
        profile = library.link(site_link.link, referenced_from=path, key=f"network.site_links[{index}].link")
        resolved.append((a, b, profile))
    joined = {frozenset((a, b)) for a, b, _ in resolved}
    for index, site in enumerate(spec.sites):
        if site.via is not None and frozenset((site.name, site.via)) not in joined:
            problem = f"no site link joins '{site.name}' and '{site.via}' (add one under network.site_links)"
            raise InputError(path, f"sites[{index}].via", problem)
    via = {s.name: s.via for s in spec.sites if s.via is not None}
    for index, site in enumerate(spec.sites):
        if site.via is not None and via.get(site.via) == site.name:
            problem = f"'{site.name}' routes via '{site.via}', which routes via '{site.name}': a cycle; drop one via"
            raise InputError(path, f"sites[{index}].via", problem)
    return tuple(resolved)


def _resolve_availability(spec: ScenarioSpec, clients: list[ClientSpec], path: Path) -> Availability:
    """Per-client shift, maintenance and trace rules; unknown sites or clients are input errors."""
    rules = spec.availability
    sites = {s.name for s in spec.sites}
    by_name = {c.name: c.client_id for c in clients}
    if rules.day_start >= DAY_S:
        raise InputError(path, "availability.day_start", "is a time of day and must be below 24 h")
    for index, shift in enumerate(rules.shifts):
        unknown = sorted(set(shift.sites or ()) - sites)
        if unknown:
            raise InputError(path, f"availability.shifts[{index}].sites", f"unknown site '{unknown[0]}'")
    maintenance: dict[int, list[Window]] = {}
    for index, window in enumerate(rules.maintenance):
        if window.site is not None and window.site not in sites:
            raise InputError(path, f"availability.maintenance[{index}].site", f"unknown site '{window.site}'")
        if window.client is not None and window.client not in by_name:
            raise InputError(path, f"availability.maintenance[{index}].client", f"unknown client '{window.client}'")
        for client in clients:
            if client.site == window.site or client.name == window.client:
                maintenance.setdefault(client.client_id, []).append(
                    Window(window.start, window.start + window.duration)
                )
    trace = read_trace(path.parent / rules.trace, by_name, path, "availability.trace") if rules.trace else {}
    per_client = {}
    for client in clients:
        shifts = tuple(Window(s.start, s.end) for s in rules.shifts if s.sites is None or client.site in s.sites)
        windows = tuple(maintenance.get(client.client_id, ()))
        traced = tuple(trace[client.client_id]) if client.client_id in trace else None
        if shifts or windows or traced is not None:
            per_client[client.client_id] = ClientAvailability(shifts, windows, traced)
    return Availability(per_client, rules.day_start)


def _resolve_outages(spec: ScenarioSpec, clients: list[ClientSpec], path: Path) -> tuple[Outage, ...]:
    """Each outage's ``link`` as the node pair of its physical link."""
    sites = {s.name for s in spec.sites}
    by_name = {c.name: c for c in clients}
    bridges = {frozenset(link.sites): tuple(link.sites) for link in spec.network.site_links}
    resolved = []
    for index, outage in enumerate(spec.network.outages):
        kind, _, name = outage.link.partition(":")
        if outage.link == "server":
            nodes = (CORE, SERVER)
        elif kind == "backhaul" and name in {s.name for s in spec.sites if s.backhaul is not None}:
            nodes = (site_node(name), CORE)
        elif kind == "site_link" and frozenset(name.split("/")) in bridges:
            a, b = bridges[frozenset(name.split("/"))]
            nodes = (site_node(a), site_node(b))
        elif kind == "access" and name in by_name:
            site = next(s for s in spec.sites if s.name == by_name[name].site)
            nodes = (client_node(by_name[name].client_id), site_node(site.name) if site.backhaul else CORE)
        else:
            raise InputError(
                path,
                f"network.outages[{index}].link",
                f"'{outage.link}' names no link; use 'server', 'backhaul:<site>' (sites: {', '.join(sorted(sites))}), "
                "'site_link:<site>/<site>' or 'access:<client>' (e.g. 'access:" + next(iter(by_name)) + "')",
            )
        resolved.append(Outage(nodes, outage.start, outage.start + outage.duration))
    return tuple(resolved)
