"""The package's structure: the input side runs no code of the engine's, and no import circles."""

from __future__ import annotations

import ast
import subprocess
import sys

import networkx as nx

from tests.conftest import REPO

PACKAGE = REPO / "fedhq_sim"


def _module_name(path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> nx.DiGraph:
    """Every import of a package module by another, at module level, in a function or under
    ``TYPE_CHECKING`` alike: a circle through any of them is a circle in the design."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            graph.add_edges_from((name, t) for t in targets if t in modules and t != name)
    return graph


def test_the_package_has_no_import_circles():
    graph = import_graph()
    assert graph.number_of_edges() > 100  # the walk found the imports
    circles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert circles == []


def test_reading_a_scenario_loads_no_policy_engine_or_topology_module():
    code = "import sys, fedhq_sim.scenario; print(' '.join(m for m in sys.modules if m.startswith('fedhq_sim')))"
    loaded = set(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    )
    assert "fedhq_sim.scenario" in loaded
    forbidden = {m for m in loaded if m.startswith(("fedhq_sim.policies", "fedhq_sim.engine", "fedhq_sim.topology"))}
    assert forbidden == set()
