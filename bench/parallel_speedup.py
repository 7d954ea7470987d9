"""Speed-up of a round's real client work on a process pool (issue 7: at least 1.6x on 2 cores).

Usage: .venv/bin/python bench/parallel_speedup.py [--repeats 3] [--workers 2] [--rounds 6] [--engines process ray]

Runs the FedHQ comparison scenario with 20 clients per round, serially and on ``--workers``
processes (and, with ``ray`` among ``--engines``, as Ray tasks on a local instance of
``--workers`` CPUs), alternating them so host noise hits all alike, and checks that all give
the same rounds. It prints the median host seconds of a round (the first round of each run
left out: it warms caches and the workers' imports) and its ratio to serial, and the whole
run's wall time with the pool's or Ray's start included.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import ExitStack
from pathlib import Path

import torch

from fedhq_sim.engine import Simulation
from fedhq_sim.executor_choice import open_executor
from fedhq_sim.scenario import load_scenario
from fedhq_sim.tables import rounds_frame

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "fedhq_comparison.yaml"


def timed_run(engine: str, workers: int, rounds: int) -> tuple[float, list[float], list]:
    """Wall seconds of the run, host seconds of each round after the first, the rounds."""
    scenario = load_scenario(SCENARIO, {"training.clients_per_round": 20, "training.rounds": rounds})
    start = time.perf_counter()
    with ExitStack() as stack:
        simulation = Simulation(scenario, open_executor(stack, engine, workers))
        result = simulation.run()
    per_round = [t.host_s for t in simulation.host_timing[1:]]
    return time.perf_counter() - start, per_round, result.rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--engines", nargs="+", choices=("process", "ray"), default=["process"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    sides = [("serial", "process", 1)] + [(f"{e} x{args.workers}", e, args.workers) for e in args.engines]
    walls: dict[str, list[float]] = {label: [] for label, _, _ in sides}
    rounds_s: dict[str, list[float]] = {label: [] for label, _, _ in sides}
    for _ in range(args.repeats):
        results = {}
        for label, engine, workers in sides:
            wall, per_round, results[label] = timed_run(engine, workers, args.rounds)
            walls[label].append(wall)
            rounds_s[label].extend(per_round)
        for label in results:
            if not rounds_frame(results[label]).equals(rounds_frame(results["serial"])):
                raise SystemExit(f"the {label} run's rounds differ from the serial run's")
    print(f"scenario: {SCENARIO.name}, 20 clients per round, {args.rounds} rounds, {args.repeats} repeats")
    serial_round, serial_wall = statistics.median(rounds_s["serial"]), statistics.median(walls["serial"])
    for label, _, _ in sides:
        per_round, wall = statistics.median(rounds_s[label]), statistics.median(walls[label])
        print(
            f"{label:>12}: round median {per_round:.3f} s ({len(rounds_s[label])} rounds), speed-up "
            f"{serial_round / per_round:.2f}x (target >= 1.6x); run wall {wall:.1f} s ({serial_wall / wall:.2f}x)"
        )


if __name__ == "__main__":
    main()
