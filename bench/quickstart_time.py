"""Host wall time of the quickstart scenario (issue 2's target: under 3 minutes on 2 cores).

Usage: .venv/bin/python bench/quickstart_time.py [--repeats 3] [SCENARIO]

Each repeat runs the whole simulation in a fresh process (imports, data, every round), so
the figure is what a user waits for after `make run`'s setup. Prints the median and range.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default=str(REPO / "scenarios" / "quickstart.yaml"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            cmd = [sys.executable, "-m", "fedhq_sim", "run", args.scenario, "--out", out, "--overwrite", "--quiet"]
            subprocess.run(cmd, check=True)  # noqa: S603 - our own CLI with our own arguments
            times.append(time.perf_counter() - start)
    print(f"scenario: {args.scenario}")
    print(f"runs: {', '.join(f'{t:.1f} s' for t in times)}")
    print(f"median: {statistics.median(times):.1f} s (target: under 180 s)")


if __name__ == "__main__":
    main()
