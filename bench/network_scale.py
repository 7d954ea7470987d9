"""Network scale: one round of uploads from N clients through one shared backhaul.

Builds the plant topology from a scenario with one site of N Raspberry Pi 4 gateways on
Wi-Fi 6 behind an LTE backhaul (the issue's case: many gateways, one narrow uplink), starts
every client's upload of a real int8 small-CNN update at once (each after its route's
latency and seeded jitter) and runs the flow network until all have arrived. Reports host
seconds per N, so the growth with N can be read side by side in one run:

    .venv/bin/python bench/network_scale.py --clients 500 1000 2000 5000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import simpy
import yaml

from fedhq_sim.network import FlowNetwork
from fedhq_sim.scenario import load_scenario
from fedhq_sim.topology import build_topology

REPO = Path(__file__).resolve().parent.parent
UPDATE_BYTES = 12_900  # an 8-bit small-CNN update, as serialized by the simulator


def scenario(n_clients: int, folder: Path) -> Path:
    data = {
        "name": f"backhaul-{n_clients}",
        "seed": 1,
        "profiles_dir": str(REPO / "device_profiles"),
        "server": {"device": "x86_server", "link": "ethernet_10g"},
        "sites": [
            {"name": "hall", "backhaul": "lte", "devices": [{"device": "rpi4", "link": "wifi6", "count": n_clients}]}
        ],
        "data": {"dataset": "digits", "dirichlet_alpha": 1.0, "min_client_samples": 1},
        "model": "small_cnn",
        "training": {
            "rounds": 1,
            "clients_per_round": n_clients,
            "local_epochs": 1,
            "batch_size": 16,
            "learning_rate": 0.1,
            "round_deadline": "10 h",
        },
        "policy": {"name": "all-ptq"},
    }
    path = folder / f"{n_clients}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def upload_round(path: Path) -> tuple[float, float]:
    """Host seconds and simulated seconds of one round of uploads."""
    topology = build_topology(load_scenario(path))
    env = simpy.Environment()
    network = FlowNetwork(env, topology.links, np.random.default_rng(0), monitored=topology.shared_links)

    def upload(route):
        yield from network.transfer(route, UPDATE_BYTES)

    start = time.perf_counter()
    for route in topology.uplink_routes.values():
        env.process(upload(route))
    env.run()
    return time.perf_counter() - start, env.now


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[500, 1000, 2000, 5000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for n in args.clients:
            path = scenario(n, Path(folder))
            runs = [upload_round(path) for _ in range(args.repeats)]
            host = statistics.median(r[0] for r in runs)
            sim = runs[0][1]
            print(f"{n:6d} clients: host {host:7.3f} s (median of {args.repeats}), simulated round {sim:9.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
