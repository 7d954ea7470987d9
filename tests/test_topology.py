from fedhq_sim.cli import main
from fedhq_sim.engine import Simulation
from fedhq_sim.nodes import CORE, SERVER, client_node, site_node
from fedhq_sim.scenario import load_scenario
from fedhq_sim.topology import build_topology
from tests.conftest import tiny_scenario_dict


def test_routes_run_access_link_then_backhaul_then_the_server_link(tiny_scenario):
    scenario = load_scenario(tiny_scenario)
    topology = build_topology(scenario)
    client = scenario.clients[0]
    up = topology.uplink_routes[client.client_id]
    gateway = site_node(client.site)
    assert up == ((client_node(client.client_id), gateway), (gateway, CORE), (CORE, SERVER))
    assert topology.downlink_routes[client.client_id] == tuple((b, a) for a, b in reversed(up))
    # Each direction takes its own capacity from the link profile.
    assert topology.links[up[0]].capacity_bps == client.link.uplink
    assert topology.links[(gateway, client_node(client.client_id))].capacity_bps == client.link.downlink
    assert topology.links[up[1]].capacity_bps == scenario.backhauls[client.site].uplink


def test_clients_of_one_site_share_its_backhaul_and_all_share_the_server_link(tiny_scenario):
    scenario = load_scenario(tiny_scenario)
    topology = build_topology(scenario)
    by_site: dict[str, set] = {}
    for c in scenario.clients:
        by_site.setdefault(c.site, set()).add(topology.uplink_routes[c.client_id][1])
    assert all(len(backhauls) == 1 for backhauls in by_site.values())
    assert len({topology.uplink_routes[c.client_id][-1] for c in scenario.clients}) == 1
    assert topology.graph.number_of_nodes() == 2 + len(scenario.backhauls) + len(scenario.clients)


def test_a_site_without_a_backhaul_is_a_star_around_the_server(write_scenario):
    data = tiny_scenario_dict()
    del data["sites"][0]["backhaul"]
    scenario = load_scenario(write_scenario(data))
    topology = build_topology(scenario)
    hall = [c for c in scenario.clients if c.site == "hall"]
    for client in hall:
        assert topology.uplink_routes[client.client_id] == ((f"client:{client.client_id}", "core"), ("core", "server"))
    assert "site:hall" not in topology.graph
    result = Simulation(scenario).run()
    assert result.rounds[-1].reported == result.rounds[-1].selected


def test_an_aggregator_needs_a_gateway(write_scenario, capsys):
    data = tiny_scenario_dict()
    del data["sites"][0]["backhaul"]
    data["sites"][0]["aggregator"] = "rpi5"
    assert main(["validate", str(write_scenario(data))]) == 2
    assert "sites[0].aggregator: needs a gateway: give the site a backhaul" in capsys.readouterr().err


def _with_a_bridge(via=None, bridge="ethernet_1g"):
    data = tiny_scenario_dict()
    data["network"] = {"site_links": [{"sites": ["yard", "hall"], "link": bridge}]}
    if via:
        data["sites"][1]["via"] = via
    return data


def test_routes_take_the_lowest_latency_path_unless_the_scenario_fixes_them(write_scenario):
    # The yard's own backhaul is LTE (27.5 ms); the hall's fibre plus a 0.2 ms bridge is faster.
    scenario = load_scenario(write_scenario(_with_a_bridge()))
    yard = next(c for c in scenario.clients if c.site == "yard")
    shortest = build_topology(scenario).uplink_routes[yard.client_id]
    assert shortest[1:] == (("site:yard", "site:hall"), ("site:hall", "core"), ("core", "server"))
    # A lossy bridge that is slower than the LTE backhaul is not taken by the shortest path...
    slow = load_scenario(write_scenario(_with_a_bridge(bridge="nbiot"), "slow.yaml"))
    assert build_topology(slow).uplink_routes[yard.client_id][1] == ("site:yard", "core")
    # ...unless the scenario fixes the route through the neighbour.
    fixed = load_scenario(write_scenario(_with_a_bridge(via="hall", bridge="nbiot"), "fixed.yaml"))
    topology = build_topology(fixed)
    assert topology.uplink_routes[yard.client_id][1:3] == (("site:yard", "site:hall"), ("site:hall", "core"))
    assert topology.downlink_routes[yard.client_id][:2] == (("server", "core"), ("core", "site:hall"))


def test_a_fixed_route_needs_a_site_link(write_scenario, capsys):
    data = tiny_scenario_dict()
    data["sites"][1]["via"] = "hall"
    assert main(["validate", str(write_scenario(data))]) == 2
    assert "sites[1].via: no site link joins 'yard' and 'hall'" in capsys.readouterr().err


def test_a_fixed_route_never_comes_back_through_its_own_site(write_scenario):
    data = tiny_scenario_dict()
    data["network"] = {"site_links": [{"sites": ["hall", "yard"], "link": "fibre_1g"}]}
    data["sites"][0]["via"] = "yard"
    scenario = load_scenario(write_scenario(data))
    hall = next(c for c in scenario.clients if c.site == "hall")
    route = build_topology(scenario).uplink_routes[hall.client_id]
    assert [hop[1] for hop in route] == ["site:hall", "site:yard", "core", "server"]


def test_an_outage_can_cut_a_site_link(write_scenario):
    data = tiny_scenario_dict()
    data["training"].update(rounds=1, clients_per_round=4)
    data["network"] = {
        "site_links": [{"sites": ["yard", "hall"], "link": "ethernet_1g"}],
        "outages": [{"link": "site_link:hall/yard", "start": "0 s", "duration": "30 s"}],
    }
    simulation = Simulation(load_scenario(write_scenario(data)))
    record = simulation.run().rounds[-1]
    bridge = [s for s in simulation.network.samples if s.link == ("site:yard", "site:hall")]
    assert bridge and all(s.rate_bps == 0 for s in bridge if s.time_s < 30)
    assert record.latency_s > 30 and record.reported == 4  # the yard's traffic waited for the bridge
