"""Sync, buffered, async and semi-sync rounds on the FedHQ comparison scenario (docs/async.md).

Usage: .venv/bin/python bench/async_modes.py OUT [--seeds 1 2 3] [--jobs 2]

Runs ``fedhq-sim compare scenarios/fedhq_comparison.yaml`` for all-PTQ, all-QAT and FedHQ in
each mode, with about the same number of client updates in each (15 rounds of 12; 30
FedBuff versions of 6; 180 FedAsync versions of 1; 15 semi-sync rounds of 12 turns begun,
each round 0.13 s, half a median sync round, late updates carried over), then draws
deployed accuracy against simulated time (the median over seeds at each version) and
prints each mode's table. A folder already written in OUT is
read, not run again.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
MODES = {
    "sync": ["training.rounds=15"],
    "buffered": ["training.rounds=30"],
    "async": ["training.rounds=180"],
    "semi-sync": ["training.rounds=15", "training.aggregation.period=0.13 s"],
}
POLICIES = ("all-ptq", "all-qat", "fedhq")


def run_mode(mode: str, out: Path, seeds: list[str], jobs: int) -> Path:
    folder = out / mode
    if not (folder / "summary.csv").exists():
        sets = [arg for value in [f"training.mode={mode}", *MODES[mode]] for arg in ("--set", value)]
        command = [sys.executable, "-m", "fedhq_sim", "compare", "scenarios/fedhq_comparison.yaml"]
        command += ["--policies", *POLICIES, "--seeds", *seeds, *sets, "--jobs", str(jobs)]
        subprocess.run([*command, "--out", str(folder), "--overwrite", "--quiet"], cwd=REPO, check=True)  # noqa: S603
    return folder


def curves(folder: Path, policy: str) -> pd.DataFrame:
    """Median over seeds of each version's end time and deployed accuracy."""
    runs = [pd.read_csv(path) for path in sorted((folder / "runs").glob(f"policy={policy}-seed*/rounds.csv"))]
    both = pd.concat(runs).groupby("round")[["end_s", "deployed_accuracy"]].median()
    return both.reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", nargs="+", default=["1", "2", "3"])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    folders = {mode: run_mode(mode, args.out, args.seeds, args.jobs) for mode in MODES}
    figure, axes = plt.subplots(1, len(POLICIES), figsize=(13, 3.6), sharey=True, layout="constrained")
    for ax, policy in zip(axes, POLICIES, strict=True):
        for mode, folder in folders.items():
            curve = curves(folder, policy)
            ax.plot(curve["end_s"], curve["deployed_accuracy"], label=mode, lw=1.2)
        ax.axhline(0.8, color="grey", lw=0.6, ls=":")
        ax.set(title=policy, xlabel="simulated time [s]", ylim=(0.0, 1.0))
    axes[0].set_ylabel("deployed accuracy (4-bit), median of seeds")
    axes[-1].legend(loc="lower right")
    figure.savefig(args.out / "async_modes.png", dpi=110)
    for mode, folder in folders.items():
        print(f"\n### {mode}\n")
        print((folder / "table.md").read_text())
    print(f"figure: {args.out / 'async_modes.png'}")


if __name__ == "__main__":
    main()
