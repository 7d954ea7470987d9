"""Scaling of timing-only runs: wall time and peak memory from 100 to 10,000 clients.

Usage: .venv/bin/python bench/timing_scale.py [--clients 100 300 1000 3000 10000] [--rounds 10] [--repeats 3]
       [--mode buffered]

Issue 7's targets: 10,000 clients for 10 rounds through a shared backhaul in at most 60 s on
one core, peak memory at most 2 GiB, cost growing no worse than n log n. Each run is the
whole command a planner types, `fedhq-sim run SCENARIO --timing-only` (imports, loading,
the hardware analysis and feasibility checks, every round, and every results file: CSVs,
figures, trace, report), in a fresh process pinned to one core. The scenario is one hall of
N gateways in four device and link classes (Raspberry Pi 4 on Wi-Fi 6, Raspberry Pi 5 and
Intel N100 PCs on Ethernet, Cortex-A53 gateways on Wi-Fi 5) behind ONE LTE backhaul, and
every one of them takes part in every round (the worst case for the event loop: 2N
transfers share the backhaul each round); the MLP on generated pump readings, about 24
samples a client, a fixed hybrid policy (20 % QAT).

Printed per N: the median wall time of the command, the median host time of the simulation
itself (from creating the simulation to its last round, run.json's host_seconds), the
median host time of a round after the first (the first also traces the work profiles),
the peak resident memory (the child's ru_maxrss), and the growth exponent k of the round
time between successive N (time ~ N^k; N log N from 1,000 to 10,000 is k = 1.1, and fixed
costs make small N look flatter).

With ``--mode buffered`` (issue 16's target: 10,000 clients in buffered mode for the
simulated time of 10 sync rounds in at most 60 s on one core), each N first runs the sync
scenario (untimed) to learn when its last round ends, then times the same fleet in FedBuff
mode: every client in flight at once (``concurrency`` N), a version at every N/10-th
arrival, until that simulated time (``training.time_limit``). "round" is then a version.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def scenario(n_clients: int, rounds: int, folder: Path, *, until_s: float | None = None) -> Path:
    """The fleet of N; with ``until_s``, in buffered mode until that simulated time."""
    quarter = n_clients // 4
    data = {
        "name": f"fleet-{n_clients}",
        "seed": 1,
        "profiles_dir": str(REPO / "device_profiles"),
        "server": {"device": "x86_server", "link": "ethernet_10g"},
        "sites": [
            {
                "name": "hall",
                "backhaul": "lte",
                "devices": [
                    {"device": "rpi4", "link": "wifi6", "count": quarter},
                    {"device": "rpi5", "link": "ethernet_1g", "count": quarter},
                    {"device": "ipc_n100", "link": "ethernet_1g", "count": quarter},
                    {"device": "cortex_a53_gateway", "link": "wifi5", "count": n_clients - 3 * quarter},
                ],
            }
        ],
        "data": {
            "dataset": "plant_sensors",
            "dirichlet_alpha": 100.0,
            "min_client_samples": 4,
            "samples_per_class": max(600, n_clients * 4),
            "test_fraction": 0.05,
        },
        "model": "mlp",
        "training": {
            "rounds": rounds,
            "clients_per_round": n_clients,
            "local_epochs": 1,
            "batch_size": 16,
            "learning_rate": 0.05,
            "round_deadline": "2 h",
        },
        "policy": {"name": "hybrid", "qat_fraction": 0.2},
    }
    if until_s is not None:
        data["training"] |= {
            "rounds": 100_000,
            "time_limit": f"{until_s!r} s",
            "mode": "buffered",
            "aggregation": {"concurrency": n_clients, "buffer_size": max(1, n_clients // 10)},
        }
    path = folder / f"fleet-{n_clients}{'-buffered' if until_s is not None else ''}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _one_core() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def timed_run(path: Path, out: Path) -> tuple[float, float, float, float]:
    """Wall seconds of the command, host seconds of the simulation and of a round (median
    after the first), peak memory in MiB."""
    command = [sys.executable, "-m", "fedhq_sim", "run", str(path), "--timing-only", "--quiet", "--out", str(out)]
    start = time.perf_counter()
    child = subprocess.Popen(command, preexec_fn=_one_core)  # noqa: S603 - our own CLI, our own arguments
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the run of {path.name} failed (exit {os.waitstatus_to_exitcode(status)})")
    info = json.loads((out / "run.json").read_text())
    per_round = statistics.median(info["round_host_seconds"][1:] or info["round_host_seconds"])
    return wall, info["host_seconds"], per_round, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def turns(out: Path) -> int:
    """Client turns the run began (its download rows)."""
    with (out / "events.csv").open() as events:
        phase = next(events).split(",").index("phase")
        return sum(line.split(",")[phase] == "download" for line in events)


def network_share(path: Path) -> tuple[float, float]:
    """Seconds of the simulation of ``path`` (timing-only, in this process, under cProfile)
    and the share of them spent in the flow network's own functions (fedhq_sim/network.py)."""
    import cProfile
    import pstats

    from fedhq_sim.engine import Simulation
    from fedhq_sim.scenario import load_scenario

    simulation = Simulation(load_scenario(path), timing_only=True)
    profile = cProfile.Profile()
    profile.runcall(simulation.run)
    stats = pstats.Stats(profile).stats
    total = sum(tottime for _, _, tottime, _, _ in stats.values())
    network = sum(row[2] for (file, _, _), row in stats.items() if file.endswith("fedhq_sim/network.py"))
    return total, network / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 300, 1000, 3000, 10000])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mode", choices=["sync", "buffered"], default="sync")
    parser.add_argument("--profile", action="store_true", help="also profile the last buffered run's simulation")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for n in args.clients:
            path = scenario(n, args.rounds, Path(folder))
            if args.mode == "buffered":
                sync_wall, sync_host, *_ = timed_run(path, Path(folder) / f"sync-{n}")
                sync_turns = turns(Path(folder) / f"sync-{n}")
                rounds_csv = (Path(folder) / f"sync-{n}" / "rounds.csv").read_text().splitlines()
                header, last = rounds_csv[0].split(","), rounds_csv[-1].split(",")
                until_s = float(last[header.index("end_s")])
                path = scenario(n, args.rounds, Path(folder), until_s=until_s)
                print(
                    f"{n:>6} clients: {args.rounds} sync rounds end at {until_s:.1f} s simulated "
                    f"(sync: wall {sync_wall:.1f} s, simulation {sync_host:.1f} s, {sync_turns:,} turns)",
                    flush=True,
                )
            runs = [timed_run(path, Path(folder) / f"out-{n}-{i}") for i in range(args.repeats)]
            wall, host, per_round = (statistics.median(r[k] for r in runs) for k in range(3))
            rows.append((n, wall, host, per_round, max(r[3] for r in runs)))
            counted = f", {turns(Path(folder) / f'out-{n}-0'):,} turns" if args.mode == "buffered" else ""
            print(f"{n:>6} clients: wall {wall:6.1f} s, simulation {host:6.1f} s, round {per_round:6.3f} s{counted}")
        if args.profile and args.mode == "buffered":
            total, share = network_share(path)
            print(f"{args.clients[-1]:,} clients buffered under cProfile: {total:.1f} s, {share:.0%} in network.py")
    what = "rounds, every client in every round" if args.mode == "sync" else "sync rounds' time in buffered mode"
    print(f"\n{args.rounds} {what}, one core, median of {args.repeats}")
    print("| clients | wall [s] | simulation [s] | round [s] | peak memory [MiB] | growth k (round ~ N^k) |")
    print("|---|---|---|---|---|---|")
    for i, (n, wall, host, per_round, peak) in enumerate(rows):
        growth = "" if i == 0 else f"{math.log(per_round / rows[i - 1][3]) / math.log(n / rows[i - 1][0]):.2f}"
        print(f"| {n:,} | {wall:.1f} | {host:.1f} | {per_round:.3f} | {peak:.0f} | {growth} |")
    n, wall, *_, peak = rows[-1]
    print(f"\nlargest: {n:,} clients in {wall:.1f} s (target <= 60 s), peak {peak / 1024:.2f} GiB (target <= 2 GiB)")


if __name__ == "__main__":
    main()
