"""Memory over a long run: 200 rounds in full mode should grow only by the results they keep.

Usage: .venv/bin/python bench/long_run.py [--rounds 200] [--every 25]   (or: make bench-long)

Runs the test suite's tiny scenario (two sites, four clients, three a round, real fp32/PTQ/QAT
work) for ``--rounds`` rounds in this process, serially, and prints every ``--every`` rounds
the resident memory (``/proc/self/statm``) and the Python heap (``tracemalloc``, started after
the first round), with how many records the run keeps by then. A leak of anything a round
makes (a client's update, a model, a work profile) would grow the heap by tens of KiB a
round; the records a round adds (nine phases, a round, its link samples) are about 3 KiB.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import tracemalloc
from pathlib import Path

import yaml

from fedhq_sim.engine import Simulation
from fedhq_sim.scenario import load_scenario

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.conftest import PROFILES, tiny_scenario_dict  # noqa: E402 - the suite's scenario, from the repo


def resident_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--every", type=int, default=25)
    args = parser.parse_args()
    data = tiny_scenario_dict() | {"profiles_dir": str(PROFILES)}
    data["training"]["rounds"] = args.rounds
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "long.yaml"
        path.write_text(yaml.safe_dump(data))
        simulation = Simulation(load_scenario(path))
    rows = []

    def on_round(record, _host_s) -> None:
        if record.round == 1:
            tracemalloc.start()
        if record.round % args.every == 0:
            heap = tracemalloc.get_traced_memory()[0] / 1024
            kept = len(simulation.phases) + len(simulation.network.samples) + len(simulation.rounds)
            rows.append((record.round, resident_mib(), heap, kept))
            print(
                f"round {record.round:>4}: resident {rows[-1][1]:7.1f} MiB, Python heap {heap:8.1f} KiB, "
                f"{kept} records kept",
                flush=True,
            )

    simulation.run(on_round)
    (r0, rss0, heap0, kept0), (r1, rss1, heap1, kept1) = rows[0], rows[-1]
    per_round = (heap1 - heap0) / (r1 - r0)
    per_record = (heap1 - heap0) / max(kept1 - kept0, 1)
    print(
        f"rounds {r0}-{r1}: Python heap +{per_round:.2f} KiB a round ({per_record * 1024:.0f} B per record kept), "
        f"resident +{(rss1 - rss0) / (r1 - r0) * 1024:.0f} KiB a round"
    )


if __name__ == "__main__":
    main()
