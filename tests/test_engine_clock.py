"""The engine's clock alone: a hand-built world and a stand-in work with fixed charges.

No training, quantization or tracing runs here (the scenario's input check builds its model
once); what is under test is the loop and its components: when each phase of each client
begins and ends, on links whose transfer times are known in closed form (no jitter, no
loss, one flow per access link) and on work whose charge is a count of dispatches.
"""

from __future__ import annotations

from collections import Counter

import pytest
import yaml

from fedhq_sim.engine import Simulation
from fedhq_sim.executors import completed
from fedhq_sim.policies import ClientInfo
from fedhq_sim.policies.choice import choose_policy
from fedhq_sim.round_work import ClientResult, ServerOutcome
from fedhq_sim.scenario import LoadedScenario, load_scenario
from fedhq_sim.server_work import Update
from fedhq_sim.topology import build_topology
from fedhq_sim.work import OpCost, WorkProfile
from fedhq_sim.world import World, site_gateways
from tests.conftest import WIRE_LATENCY_S, tiny_scenario_dict

MODEL_NBYTES = 1_000_000  # 1.0 s on an 8 Mbit/s wire
UPDATE_NBYTES = 500_000  # 0.5 s
DISPATCH = OpCost("view", "view", "fp32", 0.0, 0.0)


def dispatches(n: int) -> WorkProfile:
    """Work that costs ``n`` times the device's dispatch overhead, and nothing else."""
    return WorkProfile(Counter({DISPATCH: n}))


class FixedWork:
    """A round's work with fixed charges: client ``c`` computes ``client_dispatches[c]``
    dispatches and uploads ``UPDATE_NBYTES``; the server aggregates in ``server_dispatches``."""

    def __init__(self, client_dispatches: dict[int, int], server_dispatches: int = 100_000) -> None:
        self.client_dispatches = client_dispatches
        self.server_dispatches = server_dispatches
        self.rounds: list[tuple[int, dict]] = []
        self.seeds: list[int] = []  # the training seed of every asynchronous turn

    def begin_round(self, r, assignment):
        self.rounds.append((r, dict(assignment)))
        return MODEL_NBYTES

    def dispatch(self, assignment, seeds):
        self.rounds.append((None, dict(assignment)))
        self.seeds.extend(seeds.values())
        return MODEL_NBYTES

    def forget(self, client_id):
        pass

    def client(self, client_id):
        work = dispatches(self.client_dispatches[client_id])
        return ClientResult(work, Update(None, 100, "ptq8", UPDATE_NBYTES), 0.5, None)

    def gateway(self, updates):
        return Update(None, sum(u.num_samples for u in updates), "fp32", MODEL_NBYTES), dispatches(1000)

    def gateway_estimate(self, n_updates):
        return dispatches(1000)

    def rejection(self, update, corruption):
        return "NaN values"

    def server(self, updates, mixing=None):
        return ServerOutcome(dispatches(self.server_dispatches), completed(lambda: (0.5, 0.5)))

    def initial_accuracy(self):
        return 0.1, 0.1

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def star_scenario(tmp_path, profiles, n_clients: int, policy: dict | None = None, **training) -> LoadedScenario:
    """``n_clients`` Raspberry Pi 4s on their own wires straight to the server's trunk."""
    data = tiny_scenario_dict()
    data["profiles_dir"] = str(profiles)
    data["server"] = {"device": "x86_server", "link": "trunk"}
    data["sites"] = [{"name": "hall", "devices": [{"device": "rpi4", "link": "wire", "count": n_clients}]}]
    data["policy"] = policy or {"name": "all-ptq"}
    data["training"].update(clients_per_round=n_clients, **training)
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_scenario(path)


def fleet_world(scenario: LoadedScenario) -> World:
    """The world of ``scenario`` without its data, analysis or feasibility: every client can
    run every strategy, and holds 100 samples."""
    able = frozenset({"fp32", "ptq8", "qat8"})
    infos = [ClientInfo(c.client_id, c.site, c.device.name, c.link.name, 100, able) for c in scenario.clients]
    return World(
        scenario,
        choose_policy(scenario),
        None,
        build_topology(scenario),
        [],
        {c.client_id: able for c in scenario.clients},
        site_gateways(scenario),
        None,
        {},
        infos,
    )


def log(simulation: Simulation) -> list[tuple[int, int, str, float, float, str]]:
    return [(p.round, p.client_id, p.phase, p.start_s, p.end_s, p.status) for p in simulation.phases]


def test_a_synchronous_round_is_download_compute_upload_then_the_servers_aggregation(tmp_path, profiles):
    scenario = star_scenario(tmp_path, profiles, 2, rounds=2)
    pi, server = scenario.clients[0].device, scenario.server_device
    work = FixedWork({0: 100_000, 1: 200_000})
    simulation = Simulation.on(fleet_world(scenario), work)
    rounds = simulation.run().rounds

    down_s, up_s = WIRE_LATENCY_S + 1.0, WIRE_LATENCY_S + 0.5
    compute_s = {cid: n * pi.overheads.dispatch for cid, n in work.client_dispatches.items()}
    server_s = work.server_dispatches * server.overheads.dispatch
    expected, start = [], 0.0
    for r in (1, 2):
        for cid in (0, 1):
            t = start
            expected.append((r, cid, "download", t, t + down_s, "completed"))
        for cid in (0, 1):
            t = start + down_s
            expected.append((r, cid, "compute", t, t + compute_s[cid], "completed"))
        for cid in (0, 1):
            t = start + down_s + compute_s[cid]
            expected.append((r, cid, "upload", t, t + up_s, "completed"))
        start += down_s + compute_s[1] + up_s + server_s
    got = sorted(log(simulation), key=lambda row: (row[0], ("download", "compute", "upload").index(row[2]), row[1]))
    assert [(*row[:3], row[5]) for row in got] == [(*row[:3], row[5]) for row in expected]
    times = [t for row in got for t in row[3:5]]
    assert times == pytest.approx([t for row in expected for t in row[3:5]], rel=1e-12, abs=1e-12)
    assert [r.end_s for r in rounds[1:]] == pytest.approx([expected[5][4] + server_s, start], rel=1e-12)
    assert [r.server_s for r in rounds[1:]] == pytest.approx([server_s, server_s], rel=1e-12)
    assert [r.n_ptq for r in rounds[1:]] == [2, 2] and work.rounds[0][1].keys() == {0, 1}


def test_a_client_past_the_deadline_is_dropped_at_the_deadline_and_the_round_ends_with_the_server(tmp_path, profiles):
    scenario = star_scenario(tmp_path, profiles, 2, rounds=1, round_deadline="3 s")
    pi, server = scenario.clients[0].device, scenario.server_device
    slow = round(5.0 / pi.overheads.dispatch)  # 5 s of compute: past the 3 s deadline
    work = FixedWork({0: 100_000, 1: slow})
    simulation = Simulation.on(fleet_world(scenario), work)
    record = simulation.run().rounds[1]

    down_s = WIRE_LATENCY_S + 1.0
    rows = {(cid, phase): (start, end, status) for _, cid, phase, start, end, status in log(simulation)}
    assert rows[(1, "compute")] == pytest.approx((down_s, 3.0, "dropped"))
    assert (1, "upload") not in rows
    assert rows[(0, "upload")][2] == "completed"
    server_s = work.server_dispatches * server.overheads.dispatch
    assert (record.collect_end_s, record.end_s) == pytest.approx((3.0, 3.0 + server_s), rel=1e-12)
    assert (record.reported, record.dropped) == (1, 1)


@pytest.mark.parametrize("n_rounds", [1, 3, 6])
def test_synchronous_rounds_end_when_their_slowest_client_and_then_the_server_are_done(tmp_path, profiles, n_rounds):
    """Closed form: round r ends at r x (download + slowest compute + upload + aggregation)."""
    scenario = star_scenario(tmp_path, profiles, 3, rounds=n_rounds)
    pi, server = scenario.clients[0].device, scenario.server_device
    work = FixedWork({0: 50_000, 1: 300_000, 2: 120_000})
    simulation = Simulation.on(fleet_world(scenario), work)
    rounds = simulation.run().rounds
    period = (WIRE_LATENCY_S + 1.0) + 300_000 * pi.overheads.dispatch + (WIRE_LATENCY_S + 0.5)
    period += work.server_dispatches * server.overheads.dispatch
    assert [r.end_s for r in rounds[1:]] == pytest.approx([period * k for k in range(1, n_rounds + 1)], rel=1e-9)
    assert [r for r, _ in work.rounds] == list(range(1, n_rounds + 1))


def test_an_over_selected_round_closes_at_its_wanted_reports_and_cancels_the_rest(tmp_path, profiles):
    scenario = star_scenario(tmp_path, profiles, 3, rounds=1, over_selection=1.5)
    scenario = load_scenario(scenario.path, {"training.clients_per_round": 2})
    pi, server = scenario.clients[0].device, scenario.server_device
    work = FixedWork({0: 100_000, 1: 900_000, 2: 300_000})
    simulation = Simulation.on(fleet_world(scenario), work)
    record = simulation.run().rounds[1]

    down_s, up_s = WIRE_LATENCY_S + 1.0, WIRE_LATENCY_S + 0.5
    second_report = down_s + 300_000 * pi.overheads.dispatch + up_s  # client 2's upload arrives
    rows = {(p.client_id, p.phase): p for p in simulation.phases}
    assert set(work.rounds[0][1]) == {0, 1, 2}  # 2 x 1.5 = 3 selected
    slow = rows[(1, "compute")]
    assert (slow.status, slow.end_s) == ("cancelled", pytest.approx(second_report, rel=1e-12))
    assert "over-selection" in slow.reason and (1, "upload") not in rows
    assert rows[(0, "upload")].status == rows[(2, "upload")].status == "completed"
    server_s = work.server_dispatches * server.overheads.dispatch
    assert (record.collect_end_s, record.end_s) == pytest.approx((second_report, second_report + server_s), rel=1e-12)
    assert (record.selected, record.reported, record.cancelled, record.dropped) == (3, 2, 1, 0)


def test_an_over_selected_site_stops_collecting_at_the_wanted_reports_and_forwards_them(tmp_path, profiles):
    """Behind an aggregating gateway a member reports when its update reaches the gateway;
    at the wanted count the gateway cancels the members still at work and forwards the rest."""
    data = tiny_scenario_dict()
    data["profiles_dir"] = str(profiles)
    data["server"] = {"device": "x86_server", "link": "trunk"}
    data["sites"] = [
        {
            "name": "hall",
            "backhaul": "trunk",
            "aggregator": "cortex_a53_gateway",
            "devices": [{"device": "rpi4", "link": "wire", "count": 4}],
        }
    ]
    data["policy"] = {"name": "all-ptq"}
    data["training"].update(rounds=1, clients_per_round=2, over_selection=2.0)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    scenario = load_scenario(path)
    pi = scenario.clients[0].device
    work = FixedWork({0: 100_000, 1: 200_000, 2: 900_000, 3: 5_000_000})
    simulation = Simulation.on(fleet_world(scenario), work)
    record = simulation.run().rounds[1]

    status = {(p.client_id, p.phase): p.status for p in simulation.phases}
    assert status[(0, "upload")] == status[(1, "upload")] == "completed"
    assert status[(2, "compute")] == status[(3, "compute")] == "cancelled"
    assert status[(-1, "upload")] == "completed"  # the gateway forwards the two it holds
    slowest_member_s = 5_000_000 * pi.overheads.dispatch
    assert record.end_s < slowest_member_s
    assert (record.selected, record.reported, record.cancelled, record.dropped) == (4, 2, 2, 0)
