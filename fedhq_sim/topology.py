"""The plant network as a networkx graph, and the routes transfers follow.

Nodes are the server, a core router in front of it, one gateway per site with a backhaul,
and one node per client. Edges carry a link profile: client--gateway is the client's access
link (client--core at a site without a backhaul: a star), gateway--core the site's
backhaul, core--server the server's own link (so all sites share the server's link).
Routes are shortest paths by latency; each physical link becomes two
:class:`~fedhq_sim.network.DirectedLink` objects, uplink (toward the server) and downlink.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import pairwise

import networkx as nx

from fedhq_sim.errors import InputError
from fedhq_sim.network import DirectedLink
from fedhq_sim.nodes import CORE, SERVER, client_node, site_node
from fedhq_sim.profiles import LinkProfile
from fedhq_sim.scenario import LoadedScenario


@dataclass(frozen=True)
class Topology:
    """The graph, its directed links, and each client's routes (lists of directed link ids)."""

    graph: nx.Graph
    links: dict[tuple[str, str], DirectedLink]
    uplink_routes: dict[int, tuple[tuple[str, str], ...]]
    downlink_routes: dict[int, tuple[tuple[str, str], ...]]

    @property
    def shared_links(self) -> tuple[tuple[str, str], ...]:
        """Directed links on more than one client's route (backhauls, the server's link)."""
        uses = Counter(
            link for routes in (self.uplink_routes, self.downlink_routes) for r in routes.values() for link in r
        )
        return tuple(link for link in self.links if uses[link] > 1)


def build_graph(scenario: LoadedScenario) -> nx.Graph:
    """Nodes and profiled edges of the plant; ``upper`` names the endpoint nearer the server."""
    graph = nx.Graph()
    graph.add_node(SERVER, kind="server", device=scenario.server_device.name)
    graph.add_node(CORE, kind="router")
    graph.add_edge(CORE, SERVER, profile=scenario.server_link, upper=SERVER)
    for site, backhaul in scenario.backhauls.items():
        graph.add_node(site_node(site), kind="gateway", site=site)
        graph.add_edge(site_node(site), CORE, profile=backhaul, upper=CORE)
    for a, b, profile in scenario.site_links:  # "uplink" runs from the first site to the second
        graph.add_edge(site_node(a), site_node(b), profile=profile, upper=site_node(b))
    for client in scenario.clients:
        node = client_node(client.client_id)
        graph.add_node(node, kind="client", device=client.device.name, site=client.site)
        upper = site_node(client.site) if client.site in scenario.backhauls else CORE  # no gateway: a star
        graph.add_edge(node, upper, profile=client.link, upper=upper)
    return graph


def _directed(profile: LinkProfile, *, toward_server: bool) -> DirectedLink:
    capacity = profile.effective_uplink if toward_server else profile.effective_downlink
    return DirectedLink(capacity, profile.latency, profile.jitter, profile.loss)


def _onward(graph: nx.Graph, site: str, via: str, latency, scenario: LoadedScenario) -> list[str]:
    """The fixed route's rest: from the neighbour's gateway to the server, never back through
    ``site`` (the neighbour's own ``via`` is not followed: its shortest path is)."""
    others = graph.subgraph(n for n in graph if n != site_node(site))
    try:
        return nx.shortest_path(others, site_node(via), SERVER, weight=latency)
    except nx.NetworkXNoPath:
        index = next(i for i, s in enumerate(scenario.spec.sites) if s.name == site)
        raise InputError(
            scenario.path, f"sites[{index}].via", f"'{via}' reaches the server only through '{site}'"
        ) from None


def build_topology(scenario: LoadedScenario) -> Topology:
    """The graph of ``scenario`` with both directions of every link and every client's routes."""
    graph = build_graph(scenario)
    links: dict[tuple[str, str], DirectedLink] = {}
    for a, b, attrs in graph.edges(data=True):
        lower = a if attrs["upper"] == b else b
        upper = attrs["upper"]
        links[(lower, upper)] = _directed(attrs["profile"], toward_server=True)
        links[(upper, lower)] = _directed(attrs["profile"], toward_server=False)

    def latency(a: str, b: str, attrs: dict) -> float:
        return attrs["profile"].latency

    # One Dijkstra from the server gives every client's route (a path per client would
    # make building a fleet of thousands quadratic).
    from_server = nx.single_source_dijkstra_path(graph, SERVER, weight=latency)
    onward = {
        s.name: _onward(graph, s.name, s.via, latency, scenario) for s in scenario.spec.sites if s.via is not None
    }
    up: dict[int, tuple[tuple[str, str], ...]] = {}
    down: dict[int, tuple[tuple[str, str], ...]] = {}
    for client in scenario.clients:
        if client.site in onward:  # the scenario fixes the route: via the neighbour's gateway
            path = [client_node(client.client_id), site_node(client.site), *onward[client.site]]
        else:
            path = from_server[client_node(client.client_id)][::-1]
        up[client.client_id] = tuple(pairwise(path))
        down[client.client_id] = tuple((b, a) for a, b in reversed(up[client.client_id]))
    return Topology(graph, links, up, down)
