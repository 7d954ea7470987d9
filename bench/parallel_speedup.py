"""Speed-up of a round's real client work on a process pool (issue 7: at least 1.6x on 2 cores).

Usage: .venv/bin/python bench/parallel_speedup.py [--repeats 3] [--workers 2] [--rounds 4]

Runs the FedHQ comparison scenario with 20 clients per round, serially and on ``--workers``
processes, alternating the two so host noise hits both alike, and checks that both give the
same rounds. It prints the median host seconds of a round (the first round of each run
left out: it warms caches and, on the pool, the workers' imports) and their ratio, and the
whole run's wall time with the pool's start included.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from fedhq_sim.engine import Simulation
from fedhq_sim.executors import ProcessExecutor
from fedhq_sim.scenario import load_scenario
from fedhq_sim.tables import rounds_frame

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "fedhq_comparison.yaml"


def timed_run(workers: int, rounds: int) -> tuple[float, list[float], list]:
    """Wall seconds of the run, host seconds of each round after the first, the rounds."""
    scenario = load_scenario(SCENARIO, {"training.clients_per_round": 20, "training.rounds": rounds})
    start = time.perf_counter()
    with ProcessExecutor(workers) if workers > 1 else nullcontext() as executor:
        simulation = Simulation(scenario, executor)
        result = simulation.run()
    per_round = [t.host_s for t in simulation.host_timing[1:]]
    return time.perf_counter() - start, per_round, result.rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    walls: dict[int, list[float]] = {1: [], args.workers: []}
    rounds_s: dict[int, list[float]] = {1: [], args.workers: []}
    for _ in range(args.repeats):
        results = {}
        for workers in (1, args.workers):
            wall, per_round, results[workers] = timed_run(workers, args.rounds)
            walls[workers].append(wall)
            rounds_s[workers].extend(per_round)
        if not rounds_frame(results[1]).equals(rounds_frame(results[args.workers])):
            raise SystemExit("the pooled run's rounds differ from the serial run's")
    print(f"scenario: {SCENARIO.name}, 20 clients per round, {args.rounds} rounds, {args.repeats} repeats")
    for workers in (1, args.workers):
        label = "serial" if workers == 1 else f"{workers} workers"
        print(
            f"{label:>10}: round median {statistics.median(rounds_s[workers]):.2f} s "
            f"({len(rounds_s[workers])} rounds); run wall median {statistics.median(walls[workers]):.1f} s"
        )
    ratio = statistics.median(rounds_s[1]) / statistics.median(rounds_s[args.workers])
    wall_ratio = statistics.median(walls[1]) / statistics.median(walls[args.workers])
    print(f"speed-up of a round: {ratio:.2f}x (target >= 1.6x); of a whole run, pool start included: {wall_ratio:.2f}x")


if __name__ == "__main__":
    main()
