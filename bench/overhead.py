"""Simulator overhead: a full-mode round against the same PyTorch work run bare in a loop.

Usage: .venv/bin/python bench/overhead.py [--repeats 3] [--rounds 6] [--clients 20]

Issue 7's target: at most 10 % over the bare PyTorch work at 20 clients per round. The full
mode is ``Simulation(...).run()`` in this process (serial client work): SimPy, the flow
network, tracing or cached work profiles, charging, records and the policy included. The
bare loop does the same computations without any of it: for each round, the same selected
clients with the same strategies and seeds run :func:`fedhq_sim.training.local_work`
untraced, one after the other, and the server aggregates, deploys and evaluates untraced;
the next round starts from the new global model. Both give the same final accuracy (checked).
The two alternate, ``--repeats`` times each, so host noise hits both alike; the figure is
the ratio of the median host seconds of a round, the first round of each run left out (it
traces every piece's profile once).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from fedhq_sim.engine import Simulation
from fedhq_sim.quant.payload import encode_fp32
from fedhq_sim.quant.strategy import Strategy
from fedhq_sim.round_work import client_seed
from fedhq_sim.scenario import load_scenario
from fedhq_sim.server_work import Update, server_round
from fedhq_sim.training import local_work
from fedhq_sim.work import untraced

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "fedhq_comparison.yaml"


def full_run(overrides: dict) -> tuple[list[float], Simulation]:
    simulation = Simulation(load_scenario(SCENARIO, overrides))
    simulation.run()
    return [t.host_s for t in simulation.host_timing[1:]], simulation


def bare_run(simulation: Simulation) -> tuple[list[float], float]:
    """The full run's rounds replayed as plain PyTorch: the same clients, strategies and seeds."""
    fresh = Simulation(simulation.scenario)  # the initial global model and the data split
    state, data, spec = fresh.work.global_state, fresh.world.data, fresh.scenario.spec
    assigned: dict[int, dict[int, Strategy]] = {}
    for p in simulation.phases:
        if p.phase == "compute" and p.status == "completed":
            assigned.setdefault(p.round, {})[p.client_id] = Strategy.from_label(p.strategy)
    seconds, accuracy = [], float("nan")
    with untraced():
        for r in sorted(assigned):
            start = time.perf_counter()
            payload = encode_fp32(state)
            updates = []
            for cid, strategy in sorted(assigned[r].items()):
                seed = client_seed(spec.seed, r, cid)
                result = local_work(payload, data.clients[cid], strategy, fresh.world.local, seed)
                updates.append(Update(result.payload, result.num_samples, strategy.label, len(result.payload)))
            server = server_round(
                updates,
                state,
                fresh.scenario.model,
                data.num_classes,
                data.server_calibration,
                data.test,
                fresh.world.quantized_bits,
            )
            state, accuracy = server.state, server.deployed_accuracy
            seconds.append(time.perf_counter() - start)
    return seconds[1:], accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--clients", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    # A fixed assignment (a quarter QAT at 4 bits), so that both sides run the same strategies.
    overrides = {
        "training.clients_per_round": args.clients,
        "training.rounds": args.rounds,
        "policy": {"name": "hybrid", "qat_fraction": 0.25, "bits": 4},
    }
    full_s: list[float] = []
    bare_s: list[float] = []
    for _ in range(args.repeats):
        rounds, simulation = full_run(overrides)
        full_s += rounds
        rounds, accuracy = bare_run(simulation)
        bare_s += rounds
        simulated = simulation.rounds[-1].deployed_accuracy
        if accuracy != simulated:
            raise SystemExit(f"the bare loop reached accuracy {accuracy}, the simulation {simulated}")
    full, bare = statistics.median(full_s), statistics.median(bare_s)
    print(f"scenario {SCENARIO.name}: {args.clients} clients per round, {args.rounds} rounds, {args.repeats} repeats")
    print(f"full-mode round: median {full:.3f} s ({len(full_s)} rounds); bare PyTorch: median {bare:.3f} s")
    print(f"overhead: {100 * (full / bare - 1):+.1f} % (target <= 10 %)")


if __name__ == "__main__":
    main()
