"""The names of the plant network's nodes, in one place: the topology builds its graph with
them, the scenario resolves an outage's link to a pair of them, and the results name links
by them (``site:hall->core`` in ``link_utilisation.csv``)."""

from __future__ import annotations

SERVER = "server"
CORE = "core"  # the router in front of the server: every site's backhaul ends here


def site_node(site: str) -> str:
    """A site's gateway."""
    return f"site:{site}"


def client_node(client_id: int) -> str:
    return f"client:{client_id}"
